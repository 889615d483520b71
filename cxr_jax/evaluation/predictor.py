"""One `Predictor` interface for every kind of trained model, loaded from any workdir.

  predictor = load_predictor("workdirs/mobilenet_v2")
  out = predictor.predict(images)     # uint8 [N, H, W, C] at predictor.image_size
  out.probs                           # PNEUMONIA probabilities [N]
  out.features                        # penultimate features [N, D] (None if the model has none)
  predictor.gradcam(images)           # heatmaps [N, H, W] in [0, 1], or None if unsupported

`evaluate`, `predict`, the report and the out-of-distribution fit all score through
it, so a new model kind (an ensemble, say) is one new subclass.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import checkpoints
from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import augment
from cxr_jax.data import batches
from cxr_jax.evaluation import gradcam as gradcam_lib
from cxr_jax.evaluation import inference
from cxr_jax.models import pca_logreg

GRADCAM_BATCH = 8  # Fixed batch: Grad-CAM compiles once per input shape.


class Output(NamedTuple):
  probs: np.ndarray  # [N] PNEUMONIA probabilities
  features: np.ndarray | None  # [N, D]


class Predictor(abc.ABC):
  """A trained model, ready to score uint8 images of its input size."""

  def __init__(self, workdir: str, config, meta: dict):
    self.workdir = workdir
    self.config = config
    self.meta = meta  # The selected checkpoint's record: threshold, epoch, validation metrics.

  @property
  def model_name(self) -> str:
    return self.config.model.name

  @property
  def preprocess(self) -> data_lib.Preprocess:
    """How files become this model's inputs (from the workdir's config.data)."""
    return data_lib.Preprocess.from_config(self.config.data)

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def channels(self) -> int:
    return int(self.config.data.channels)

  @property
  def threshold(self) -> float:
    """The decision threshold chosen on validation when training (maximises its F1)."""
    return float(self.meta["threshold"])

  def check_images(self, images: np.ndarray) -> None:
    expected = (self.image_size, self.image_size, self.channels)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise ValueError(f"{self.model_name} ({self.workdir}) scores uint8 images of shape "
                       f"[N, {', '.join(map(str, expected))}]; got {images.dtype} "
                       f"{tuple(images.shape)}.")

  @abc.abstractmethod
  def predict(self, images: np.ndarray) -> Output:
    """Probabilities (and features) of uint8 images [N, H, W, C]."""

  def probs(self, images: np.ndarray) -> np.ndarray:
    return self.predict(images).probs

  @property
  def supports_gradcam(self) -> bool:
    return False

  def gradcam(self, images: np.ndarray) -> np.ndarray | None:
    """Grad-CAM heatmaps [N, H, W] in [0, 1]; None where the model has no feature maps."""
    del images
    return None


class FlaxPredictor(Predictor):
  """The best checkpoint of a Flax workdir."""

  def __init__(self, workdir: str, config, variables: dict, meta: dict,
               batch_size: int | None = None, mesh=None):
    super().__init__(workdir, config, meta)
    self.model = models.create_model(config.model)
    self.variables = jax.device_put(variables)
    self.batch_size = int(batch_size or config.eval_batch_size)
    self.mesh = mesh
    self._fn = make_predict_fn(self.model)

  def predict(self, images: np.ndarray) -> Output:
    self.check_images(images)
    probs, features = inference.predict_batched(self._fn, self.variables, images,
                                                self.batch_size, self.mesh)
    return Output(probs, features)

  @property
  def supports_gradcam(self) -> bool:
    return True

  def gradcam(self, images: np.ndarray) -> np.ndarray:
    self.check_images(images)
    return gradcam_batched(self.model, self.variables, images)


class SklearnPredictor(Predictor):
  """A fitted scikit-learn pipeline (PCA + logistic regression); features = PCA scores."""

  def __init__(self, workdir: str, config, pipeline, meta: dict):
    super().__init__(workdir, config, meta)
    self.pipeline = pipeline

  def predict(self, images: np.ndarray) -> Output:
    self.check_images(images)
    x = pca_logreg.flatten(images)
    return Output(self.pipeline.predict_proba(x)[:, 1], self.pipeline[0].transform(x))


def make_predict_fn(model):
  """A jitted fn(variables, uint8 images) -> (probabilities, features), inference mode."""

  @jax.jit
  def predict(variables, images):
    logits, features = models.apply_with_features(model, variables, augment.to_float(images))
    return jax.nn.sigmoid(logits), features.astype(jnp.float32)

  return predict


def make_probs_fn(model):
  """A jitted fn(variables, uint8 images) -> probabilities (no features: training's check)."""

  @jax.jit
  def predict(variables, images):
    return jax.nn.sigmoid(model.apply(variables, augment.to_float(images), train=False))

  return predict


def gradcam_batched(model, variables, images: np.ndarray,
                    batch_size: int = GRADCAM_BATCH) -> np.ndarray:
  """Grad-CAM maps [N, H, W] of uint8 images, in fixed-size padded batches."""
  out = []
  for batch in batches.eval_batches(images, batch_size):
    cams = gradcam_lib.gradcam(model, variables, augment.to_float(jnp.asarray(batch["image"])))
    out.append(np.asarray(cams)[batch["mask"]])
  return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)


def load_predictor(workdir: str, batch_size: int | None = None, mesh=None) -> Predictor:
  """The trained model of `workdir` (its config.json says which kind)."""
  config = workdir_lib.load_config(workdir)
  if models.is_flax(config.model.name):
    variables, meta = checkpoints.restore_best(workdir)
    return FlaxPredictor(workdir, config, variables, meta, batch_size, mesh)
  pipeline, meta = pca_logreg.load(workdir)
  return SklearnPredictor(workdir, config, pipeline, meta)
