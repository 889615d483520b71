"""Model kinds: what each kind is and what its trained models offer; nothing about how it
trains or loads (`cxr_jax.registry` pairs each kind with its trainer and its predictor).

  kind = models.get(config.model.name)
  kind.has_model(workdir)        -> whether a trained model is saved there
  kind.supports                  -> Supports: Grad-CAM, per-depth features, AdaBN, export,
                                    OOD detector kinds
  kind.trains_by_gradient        -> whether the training and augment settings apply
  kind.create_module(config.model) -> flax.linen.Module (Flax kinds)

Built in: `FlaxKind` (one per network, with its module factory), `SklearnKind` (PCA +
logistic regression) and `EnsembleKind` (a workdir that names trained member workdirs).
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Callable, ClassVar

import ml_collections

from cxr_jax import checkpoints
from cxr_jax.models import pca_logreg

ENSEMBLE_FILE = "ensemble.json"  # The members and threshold of an ensemble workdir.
MAHALANOBIS_AND_KNN = ("mahalanobis", "knn")  # fits.ood detector kinds fitted on any features.


@dataclasses.dataclass(frozen=True)
class Supports:
  """What a kind's trained models offer (an ensemble: through the members that offer it)."""
  gradcam: bool  # Grad-CAM heatmaps of its last feature map.
  per_depth_features: bool  # Features hold one block per sown feature-map depth (the OOD
  #                          score takes the worst depth); else one block (pixels).
  adabn: bool  # BatchNorm statistics re-estimated on a folder (inference.adaptation).
  export: bool  # One serving function for ONNX, SavedModel and LiteRT (cxr_jax.export).
  ood_detectors: tuple[str, ...]  # The fits.ood detector kinds its features take.


@dataclasses.dataclass
class Trained:
  """What a kind's trainer leaves for `train.finish_run`, which ends every run alike."""
  summary: dict  # Becomes train_summary.json.
  validation: Any = None  # The validation DecodedSet it chose on (None: decoded again).
  train: Any = None  # The training DecodedSet (None: decoded again for the OOD detector).
  done: str = ""  # The closing log line.


class ModelKind(abc.ABC):
  """A model kind: what it is and what its trained models support."""

  supports: ClassVar[Supports]
  trains_by_gradient: ClassVar[bool] = False  # The train loop: optimizer, epochs, augment.

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r})"

  @abc.abstractmethod
  def has_model(self, workdir: str) -> bool:
    """Whether `workdir` holds this kind's trained model (train_summary.json aside)."""

  def create_module(self, model_config):
    raise ValueError(f"Model {self.name!r} is a {type(self).__name__}, not a Flax module.")


class FlaxKind(ModelKind):
  """A Flax network: one logit per image; sows its feature maps (models/__init__.py)."""

  supports = Supports(gradcam=True, per_depth_features=True, adabn=True, export=True,
                      ood_detectors=MAHALANOBIS_AND_KNN)
  trains_by_gradient = True

  def __init__(self, name: str, factory: Callable):
    super().__init__(name)
    self.factory = factory  # model_config -> flax.linen.Module

  def create_module(self, model_config):
    return self.factory(model_config)

  def has_model(self, workdir: str) -> bool:
    return checkpoints.has_best(workdir)


class SklearnKind(ModelKind):
  """A scikit-learn pipeline on pixels (PCA + logistic regression, models/pca_logreg.py)."""

  supports = Supports(gradcam=False, per_depth_features=False, adabn=False, export=False,
                      ood_detectors=("pca_reconstruction",))

  def has_model(self, workdir: str) -> bool:
    return pca_logreg.is_saved(workdir)


class EnsembleKind(ModelKind):
  """Trained member workdirs, their probabilities averaged.

  config.model.members names them, relative to the ensemble's workdir or absolute;
  ENSEMBLE_FILE holds them too (alone in ensembles made before config.model had them).
  """

  # Grad-CAM, per-depth features and AdaBN through the members that have them.
  supports = Supports(gradcam=True, per_depth_features=True, adabn=True, export=False,
                      ood_detectors=MAHALANOBIS_AND_KNN)

  def has_model(self, workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, ENSEMBLE_FILE))

  def model_config(self, members) -> ml_collections.ConfigDict:
    """config.model of an ensemble of `members` (as config.model.members names them)."""
    return ml_collections.ConfigDict({"name": self.name, "members": list(members)})

  @staticmethod
  def member_dirs(workdir: str, members) -> list[str]:
    """The member workdirs, found from the ensemble's `workdir`."""
    return [m if os.path.isabs(m) else os.path.join(workdir, m) for m in members]
