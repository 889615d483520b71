"""ALL_KINDS: every model kind, with the trainer that trains it and the predictor that loads it.

  registry.get(name).train(config, workdir, datasets)   -> models.Trained
  registry.load_predictor(workdir)                        -> inference.predictors.Predictor

The one place where a kind meets its behaviour: adding a kind is a model (models/), a
trainer (trainers/), a Predictor (inference/predictors.py) and one line here
(docs/design.md, "A new model kind").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from cxr_jax import models
from cxr_jax import workdir as workdir_lib
from cxr_jax.inference import predictors
from cxr_jax.trainers import ensemble
from cxr_jax.trainers import flax_loop
from cxr_jax.trainers import sklearn_fit


@dataclasses.dataclass(frozen=True)
class Entry:
  """A kind (models.ALL_MODELS), how it trains and how its trained model loads."""
  kind: models.ModelKind
  trainer: Callable  # trainer(kind, config, workdir, datasets) -> models.Trained
  loader: Callable  # loader(kind, workdir, config, batch_size, mesh) -> Predictor

  def train(self, config, workdir: str, datasets=None) -> models.Trained:
    return self.trainer(self.kind, config, workdir, datasets)

  def load(self, workdir: str, config, batch_size: int | None = None, mesh=None):
    return self.loader(self.kind, workdir, config, batch_size, mesh)


def load_predictor(workdir: str, batch_size: int | None = None, mesh=None,
                   tta: bool | None = None) -> predictors.Predictor:
  """The trained model of `workdir` (its config.json names the kind).

  tta: a TTAPredictor; None takes the config's `tta` (how the recipe was selected)."""
  config = workdir_lib.load_config(workdir)
  predictor = get(config.model.name).load(workdir, config, batch_size, mesh)
  return predictors.TTAPredictor(predictor) if (config.tta if tta is None else tta) else predictor


def _flax(name: str) -> Entry:
  return Entry(models.get(name), flax_loop.train, predictors.FlaxPredictor.load)


ALL_KINDS: dict[str, Entry] = {
    "cnn_baseline": _flax("cnn_baseline"),
    "cnn_v2": _flax("cnn_v2"),
    "cnn_v3": _flax("cnn_v3"),
    "mobilenet_v2": _flax("mobilenet_v2"),
    "pca_logreg": Entry(models.get("pca_logreg"), sklearn_fit.train,
                        predictors.SklearnPredictor.load),
    models.ENSEMBLE: Entry(
        models.get(models.ENSEMBLE),
        functools.partial(ensemble.train, load_predictor=load_predictor),
        functools.partial(predictors.EnsemblePredictor.load, load_member=load_predictor)),
}


def get(name: str) -> Entry:
  if name not in ALL_KINDS:
    raise ValueError(f"Unknown model {name!r} (config.model.name); known: {sorted(ALL_KINDS)}.")
  return ALL_KINDS[name]
