"""One `Predictor` interface for every kind of trained model.

  predictor = registry.load_predictor("workdirs/mobilenet_v2")
  out = predictor.predict(images)     # uint8 [N, H, W, C] at predictor.image_size
  out.probs                           # PNEUMONIA probabilities [N]
  out.features                        # [N, D]: what the out-of-distribution detector models
                                      # (the last feature map pooled to a 2x2 grid; pixels for PCA)
  predictor.gradcam(images)           # heatmaps [N, H, W] in [0, 1], or None if unsupported

`evaluate`, `predict`, the report and the out-of-distribution fit all score through
it. Which class a workdir loads as is its kind's entry in `cxr_jax.registry.ALL_KINDS`:
each class's `load` reads one kind's workdir.
"""

from __future__ import annotations

import abc
import copy
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import ndimage

from cxr_jax import checkpoints
from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import augment
from cxr_jax.data import batches
from cxr_jax.data import decode
from cxr_jax.inference import gradcam as gradcam_lib
from cxr_jax.inference import batching
from cxr_jax.fits import ood
from cxr_jax.models import kinds
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
  def one_view(self) -> "Predictor":
    """The network without test-time views: what the fits and exports are made from."""
    return self

  @property
  def model_name(self) -> str:
    return self.config.model.name

  @property
  def kind(self) -> models.ModelKind:
    """The registered model kind: what it supports (Grad-CAM, AdaBN, export, OOD kinds)."""
    return models.get(self.model_name)

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

  def own_detector(self, train_features=None):
    """The model's own out-of-distribution detector (scaled on `train_features`), or None."""
    del train_features
    return None

  @property
  def feature_layout(self) -> list[int]:
    """Widths of the blocks of `predict(...).features` (one per feature-map depth)."""
    raise NotImplementedError

  @property
  def supports_gradcam(self) -> bool:
    return False

  def gradcam(self, images: np.ndarray) -> np.ndarray | None:
    """Grad-CAM heatmaps [N, H, W] in [0, 1]; None where the model has no feature maps."""
    del images
    return None

  def with_batch_norm_of(self, images: np.ndarray, estimate: Callable) -> Predictor | None:
    """A copy whose BatchNorm statistics `estimate(flax_predictor, images)` re-estimated
    (evaluation.adaptation.adabn); None where nothing in it has BatchNorm."""
    del images, estimate
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

  @classmethod
  def load(cls, kind, workdir: str, config, batch_size: int | None = None, mesh=None
           ) -> FlaxPredictor:
    del kind
    variables, meta = checkpoints.restore_best(workdir)
    return cls(workdir, config, variables, meta, batch_size, mesh)

  def predict(self, images: np.ndarray) -> Output:
    self.check_images(images)
    probs, features = batching.predict_batched(
        self._fn, self.variables, images, self.batch_size, self.mesh,
        desc=f"scoring {len(images)} images" if len(images) > 1000 else None)
    return Output(probs, features)

  @property
  def supports_gradcam(self) -> bool:
    return True

  @property
  def feature_layout(self) -> list[int]:
    return models.feature_layout(self.model, self.variables, self.preprocess.shape)

  def gradcam(self, images: np.ndarray) -> np.ndarray:
    self.check_images(images)
    return gradcam_batched(self.model, self.variables, images)

  def with_batch_norm_of(self, images: np.ndarray, estimate: Callable) -> Predictor | None:
    return estimate(self, images)


class SklearnPredictor(Predictor):
  """A fitted scikit-learn pipeline (PCA + logistic regression); features = its pixels."""

  def __init__(self, workdir: str, config, pipeline, meta: dict):
    super().__init__(workdir, config, meta)
    self.pipeline = pipeline

  @classmethod
  def load(cls, kind, workdir: str, config, batch_size: int | None = None, mesh=None
           ) -> SklearnPredictor:
    del kind, batch_size, mesh
    pipeline, meta = pca_logreg.load(workdir)
    return cls(workdir, config, pipeline, meta)

  def predict(self, images: np.ndarray) -> Output:
    self.check_images(images)
    x = pca_logreg.flatten(images)
    return Output(self.pipeline.predict_proba(x)[:, 1], x)

  def own_detector(self, train_features=None):
    return ood.pca_reconstruction(self.pipeline[0], train_features)

  @property
  def feature_layout(self) -> list[int]:
    return [int(np.prod(self.preprocess.shape))]


# Test-time views (dy, dx as fractions of the side, zoom): small shifts and scales of the
# kind the training augmentation drew; never a left-right flip of a chest X-ray.
TTA_VIEWS = ((0.0, 0.0, 1.0), (0.0, -0.04, 1.0), (0.0, 0.04, 1.0), (-0.04, 0.0, 1.0),
             (0.0, 0.0, 1.06), (0.0, 0.0, 0.94))


def view(images: np.ndarray, dy: float, dx: float, zoom: float) -> np.ndarray:
  """uint8 images shifted by (dy, dx) of their side and zoomed about the centre; edges repeated."""
  if (dy, dx, zoom) == (0.0, 0.0, 1.0):
    return images
  _, h, w, _ = images.shape
  centre = np.array([(h - 1) / 2, (w - 1) / 2])
  # Output pixel o samples the input at (o - centre) / zoom + centre - shift.
  offset = centre - centre / zoom - np.array([dy * h, dx * w])
  out = np.empty_like(images)
  for i, image in enumerate(images):
    for c in range(image.shape[-1]):
      out[i, ..., c] = ndimage.affine_transform(
          image[..., c].astype(np.float32), np.full(2, 1 / zoom), offset, order=1,
          mode="nearest").round().clip(0, 255).astype(np.uint8)
  return out


class TTAPredictor(Predictor):
  """Any predictor, its probabilities averaged over TTA_VIEWS (features of the plain view)."""

  def __init__(self, base: Predictor, views=TTA_VIEWS):
    super().__init__(base.workdir, base.config, base.meta)
    self.base, self.views = base, tuple(views)

  def predict(self, images: np.ndarray) -> Output:
    self.check_images(images)
    plain = self.base.predict(images)
    probs = [plain.probs] + [self.base.probs(view(images, *v)) for v in self.views
                             if v != (0.0, 0.0, 1.0)]
    return Output(np.mean(probs, axis=0), plain.features)

  def own_detector(self, train_features=None):
    return self.base.own_detector(train_features)

  def with_batch_norm_of(self, images: np.ndarray, estimate: Callable) -> Predictor | None:
    adapted = self.base.with_batch_norm_of(images, estimate)
    return None if adapted is None else TTAPredictor(adapted, self.views)

  @property
  def one_view(self) -> Predictor:
    return self.base

  @property
  def feature_layout(self) -> list[int]:
    return self.base.feature_layout

  @property
  def supports_gradcam(self) -> bool:
    return self.base.supports_gradcam

  def gradcam(self, images: np.ndarray):
    return self.base.gradcam(images)


def resize_images(images: np.ndarray, prep) -> np.ndarray:
  """uint8 images at another model's input (bilinear, channels converted); same if equal."""
  if images.shape[1:] == prep.shape:
    return images
  out = np.empty((len(images),) + prep.shape, np.uint8)
  for i, image in enumerate(images):
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out[i] = decode.convert_and_resize(img, (prep.image_size, prep.image_size), prep.channels)
  return out


class EnsemblePredictor(Predictor):
  """Members' probabilities averaged; features concatenated; Grad-CAM averaged.

  A member with another input size sees the ensemble's input resized (bilinear).
  """

  def __init__(self, workdir: str, config, members: list[Predictor], record: dict):
    super().__init__(workdir, config, record)
    self.members = members

  @classmethod
  def load(cls, kind, workdir: str, config, batch_size: int | None = None, mesh=None, *,
           load_member: Callable) -> EnsemblePredictor:
    """load_member(workdir, batch_size, mesh): any member's Predictor (the kinds' table's)."""
    record = workdir_lib.read_json(workdir_lib.path(workdir, kinds.ENSEMBLE_FILE))
    members = [load_member(m, batch_size, mesh)
               for m in kind.member_dirs(workdir, record["members"])]
    return cls(workdir, config, members, record)

  def predict(self, images: np.ndarray) -> Output:
    self.check_images(images)
    outs = [m.predict(resize_images(images, m.preprocess)) for m in self.members]
    return Output(np.mean([o.probs for o in outs], axis=0),
                  np.concatenate([o.features for o in outs], axis=1))

  @property
  def supports_gradcam(self) -> bool:
    return any(m.supports_gradcam for m in self.members)

  @property
  def feature_layout(self) -> list[int]:
    return [w for m in self.members for w in m.feature_layout]

  def gradcam(self, images: np.ndarray):
    self.check_images(images)
    cams = []
    for m in self.members:
      if m.supports_gradcam:
        cam = m.gradcam(resize_images(images, m.preprocess))
        cams.append(np.stack([np.asarray(Image.fromarray(c.astype(np.float32)).resize(
            images.shape[2:0:-1], Image.BILINEAR)) for c in cam]))
    return np.clip(np.mean(cams, axis=0), 0.0, 1.0) if cams else None

  def with_batch_norm_of(self, images: np.ndarray, estimate: Callable) -> Predictor | None:
    """Every member's own AdaBN (at its input size); None if no member has BatchNorm."""
    adapted = [m.with_batch_norm_of(resize_images(images, m.preprocess), estimate)
               for m in self.members]
    if all(a is None for a in adapted):
      return None
    out = copy.copy(self)
    out.members = [a if a is not None else m for a, m in zip(adapted, self.members)]
    return out


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
