"""The model-kind protocol: every kind of the tables answers it, and a new kind needs nothing
but docs/design.md's recipe.

A new kind defined here (the mean brightness of each image quadrant, through a logistic
regression) as the recipe says, a ModelKind, a trainer, a Predictor and one line in each
table, is trained, finished, checked and loaded by the same calls as the built-in kinds,
without a line of cxr_jax changed.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from configs import pca_logreg as pca_config
from cxr_jax import registry
from cxr_jax import models
from cxr_jax import train
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import dataset
from cxr_jax.inference import adaptation
from cxr_jax import evaluate
from cxr_jax.fits import fit
from cxr_jax.fits import ood
from cxr_jax.inference import predictors as predictor_lib
from cxr_jax.metrics import classification as metrics_lib

BUILT_IN = {"cnn_baseline": models.FlaxKind, "cnn_v2": models.FlaxKind,
            "cnn_v3": models.FlaxKind, "mobilenet_v2": models.FlaxKind,
            "pca_logreg": models.SklearnKind, "ensemble": models.EnsembleKind}


def test_the_built_in_kinds_are_registered():
  assert {name: type(models.get(name)) for name in models.names()} == BUILT_IN


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_kind_answers_every_protocol_question(name, tmp_path):
  kind = models.get(name)
  assert kind.name == name and isinstance(kind, models.ModelKind)
  supports = kind.supports
  assert isinstance(supports, models.Supports)
  for field in dataclasses.fields(models.Supports):
    value = getattr(supports, field.name)
    if field.name == "ood_detectors":
      assert value and set(value) <= set(ood.KINDS), value
    else:
      assert isinstance(value, bool), (field.name, value)
  assert isinstance(kind.trains_by_gradient, bool)
  assert kind.has_model(str(tmp_path)) is False  # An empty folder holds no model.
  entry = registry.get(name)  # Its trainer and its loader, from the one table.
  assert entry.kind is kind and callable(entry.trainer) and callable(entry.loader)


def test_what_each_built_in_kind_supports():
  flax, sklearn, ensemble = (models.get(n) for n in ("cnn_v3", "pca_logreg", "ensemble"))
  assert flax.supports == models.Supports(True, True, True, True, ("mahalanobis", "knn"))
  assert sklearn.supports == models.Supports(False, False, False, False,
                                             ("pca_reconstruction",))
  assert ensemble.supports.export is False and ensemble.supports.gradcam
  assert [k.trains_by_gradient for k in (flax, sklearn, ensemble)] == [True, False, False]
  with pytest.raises(ValueError, match="not a Flax module"):
    sklearn.create_module(pca_config.get_config().model)


def test_the_two_tables_list_the_same_kinds_and_nothing_is_injected():
  """models.ALL_MODELS says what each kind is, registry.ALL_KINDS how it trains and loads;
  a kind carries no training or loading of its own, whatever was imported before."""
  assert sorted(registry.ALL_KINDS) == models.names()
  for name in models.names():
    assert not hasattr(models.get(name), "train")
    assert not hasattr(models.get(name), "load_predictor")
  with pytest.raises(ValueError, match="Unknown model 'nope'"):
    registry.get("nope")


# ---------------------------------------------------------------------------
# A new kind, all of it here.

MODEL_FILE = "quadrants.npz"


def _quadrant_means(images: np.ndarray) -> np.ndarray:
  h, w = images.shape[1] // 2, images.shape[2] // 2
  return np.stack([images[:, i:i + h, j:j + w].mean(axis=(1, 2, 3)) / 255.0
                   for i in (0, h) for j in (0, w)], axis=1).astype(np.float32)


class QuadrantPredictor(predictor_lib.Predictor):
  def __init__(self, workdir, config, coef, intercept, meta):
    super().__init__(workdir, config, meta)
    self.coef, self.intercept = coef, intercept

  def predict(self, images):
    self.check_images(images)
    x = _quadrant_means(images)
    return predictor_lib.Output(1 / (1 + np.exp(-(x @ self.coef + self.intercept))), x)

  @property
  def feature_layout(self):
    return [4]


class QuadrantKind(models.ModelKind):
  supports = models.Supports(gradcam=False, per_depth_features=False, adabn=False,
                             export=False, ood_detectors=("mahalanobis", "knn"))

  def has_model(self, workdir):
    return os.path.exists(os.path.join(workdir, MODEL_FILE))



def train_quadrants(kind, config, workdir, datasets=None):
  """The new kind's trainer (what trainers/ would hold)."""
  train_set, val = datasets
  fitted = LogisticRegression().fit(_quadrant_means(train_set.images), train_set.labels)
  np.savez(os.path.join(workdir, MODEL_FILE), coef=fitted.coef_[0],
           intercept=fitted.intercept_)
  probs = fitted.predict_proba(_quadrant_means(val.images))[:, 1]
  summary = {"model": kind.name, "name": config.name, "val": metrics_lib.validation_metrics(
      val.labels, probs), "val_threshold": 0.5}
  return models.Trained(summary, val, train_set, done="Done: quadrants.")


def load_quadrants(kind, workdir, config, batch_size=None, mesh=None):
  """The new kind's predictor loader (what inference/predictors.py would hold)."""
  del kind, batch_size, mesh
  z = np.load(os.path.join(workdir, MODEL_FILE))
  return QuadrantPredictor(workdir, config, z["coef"], float(z["intercept"][0]),
                           {"threshold": 0.5})


def _set(n: int, seed: int) -> dataset.DecodedSet:
  rng = np.random.default_rng(seed)
  labels = np.arange(n, dtype=np.int32) % 2
  images = rng.integers(0, 200, (n, 32, 32, 1)).astype(np.uint8)
  images[labels == 1, :16] += 40  # Pneumonia: a brighter top half, for the logistic to find.
  return dataset.DecodedSet(images, labels, [f"img{seed}_{i}.png" for i in range(n)],
                            [f"p{seed}_{i}" for i in range(n)], [])


@pytest.fixture
def quadrant_kind(monkeypatch):
  kind = QuadrantKind("quadrants")
  # Its line in each table (models.ALL_MODELS and registry.ALL_KINDS).
  monkeypatch.setitem(models.ALL_MODELS, kind.name, kind)
  monkeypatch.setitem(registry.ALL_KINDS, kind.name,
                      registry.Entry(kind, train_quadrants, load_quadrants))
  return kind


def test_a_new_kind_trains_finishes_and_loads_through_the_common_path(quadrant_kind,
                                                                       tmp_path):
  data_dir = tmp_path / "data"
  (data_dir / "train").mkdir(parents=True)  # config_checks asks for a train/ folder.
  config = pca_config.get_config("debug")
  config.name = "quadrants_run"
  config.data.data_dir, config.data.source = str(data_dir), "folder"
  config.data.image_size = 32
  config.model = ml_collections.ConfigDict({"name": quadrant_kind.name})
  workdir = str(tmp_path / "run")
  train_set, val = _set(48, 0), _set(32, 1)

  summary = train.train_and_evaluate(config, workdir, datasets=(train_set, val))

  assert summary["model"] == "quadrants" and summary["val"]["roc_auc"] > 0.9
  assert summary["val"]["loss"] == summary["val"]["log_loss"]
  assert workdir_lib.status(workdir) == (True, "trained")  # The kind's has_model answered.
  for name in (workdir_lib.SUMMARY_FILE, workdir_lib.CALIBRATION_FILE, workdir_lib.OOD_FILE,
               workdir_lib.SHIFT_FILE, "MODEL_CARD.md"):  # finish_run, as for every kind.
    assert os.path.exists(os.path.join(workdir, name)), name
  predictor = registry.load_predictor(workdir)
  assert isinstance(predictor, QuadrantPredictor) and predictor.kind is quadrant_kind
  fitted = fit.load_or_fit(predictor)
  assert fitted.reused and fitted.detector.kind == "mahalanobis"
  test = _set(20, 2)
  result = evaluate.evaluate_set(predictor, test, "test", fitted)
  assert result["n"] == 20 and "ood" in result and result["at_0.5"]["log_loss"] > 0
  adapted = adaptation.adapt(predictor, test.images, "adabn+prior", 1.0)
  assert adapted["adabn"] is False  # No BatchNorm: the base Predictor's answer.
  assert predictor.gradcam(test.images) is None and not predictor.supports_gradcam
