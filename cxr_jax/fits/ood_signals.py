"""Out of distribution means "not a chest X-ray like ours": several signals, one verdict.

The model's own detector (`ood.Detector`, the "features" signal) sees the network's
features, which come after the model's input standardisation: MobileNetV2's per-image
histogram equalisation removes any monotone grey-scale change by design, so an image
processed with another look-up table scores exactly like ours. A second, independent
signal sees the image before any standardisation:

  thumbnail  a THUMBNAIL x THUMBNAIL raw-intensity thumbnail (area average of the grey
             image in [0, 1]): framing, body size, exposure layout and grey levels. Its
             training split's thumbnails get a PCA of THUMBNAIL_DIMS directions, and the
             two statistics of PCA monitoring are tested apart and two-sided (Jackson &
             Mudholkar 1979; `ood.pca_reconstruction`): Hotelling's T^2 inside the
             subspace and Q, the residual, outside it.

Combination (a union-intersection test, Roy 1953): each signal's score is divided by
its own threshold and an image's score is the largest ratio, flagged above 1, with the
signal that gave it named. The thresholds are the validation split's quantiles at one
common level: the largest level at which the union of the signals flags at most
1 - accept of validation. Bonferroni's split ((1 - accept) / signals each) is where
the search starts and its bound; the search gives back what the signals' overlap saves.
Nothing is fitted on test or on any out-of-distribution image.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from sklearn.decomposition import PCA

from cxr_jax.fits import ood

THUMBNAIL = 32  # Side of the raw-intensity thumbnail.
THUMBNAIL_DIMS = 32  # Its principal directions (T^2 inside, Q outside).
SIGNALS = ("features", "thumbnail")
_VERSION = 1  # Of the file layout below.


def area_matrix(size: int, side: int = THUMBNAIL) -> np.ndarray:
  """[side, size]: row i averages the pixels under output pixel i (area resampling)."""
  edges = np.linspace(0.0, size, side + 1)
  pixel = np.arange(size)
  overlap = (np.minimum(edges[1:, None], pixel[None, :] + 1.0)
             - np.maximum(edges[:-1, None], pixel[None, :]))
  matrix = np.clip(overlap, 0.0, None)
  return (matrix / matrix.sum(axis=1, keepdims=True)).astype(np.float32)


def thumbnails(images, side: int = THUMBNAIL, xp=np):
  """[N, side * side] raw grey levels in [0, 1] of uint8 images [N, H, W, C] (NumPy or
  jax.numpy: one formula for scoring and for export's serving function)."""
  h, w = images.shape[1:3]
  grey = xp.mean(xp.asarray(images, xp.float32), axis=-1) / 255.0
  rows, cols = xp.asarray(area_matrix(h, side)), xp.asarray(area_matrix(w, side))
  thumb = xp.matmul(xp.matmul(rows, grey), xp.transpose(cols))  # Two small matmuls.
  return xp.reshape(thumb, (thumb.shape[0], side * side))


def fit_thumbnail(train_images, dims: int = THUMBNAIL_DIMS, seed: int = 0) -> ood.Detector:
  """The thumbnail signal, fitted on the training split's images."""
  train = thumbnails(np.asarray(train_images))
  dims = int(min(dims, train.shape[1], max(1, len(train) - 1)))
  return ood.pca_reconstruction(PCA(dims, random_state=seed).fit(train), train)


def _levels(n: int, budget: float, signals: int) -> list[float]:
  """Candidate per-signal levels, Bonferroni's first, in steps of one validation image."""
  start = budget / signals
  return [start] + [k / n for k in range(int(np.ceil(start * n)), int(np.floor(budget * n)) + 1)
                    if k / n > start]


def common_thresholds(val_scores: np.ndarray, accept: float) -> np.ndarray:
  """[S] thresholds, each signal's validation quantile at the largest common level whose
  union flags at most 1 - accept of validation (never below Bonferroni's level)."""
  val_scores = np.asarray(val_scores, np.float64)
  n, signals = val_scores.shape
  budget = 1.0 - float(accept)
  best = None
  for level in _levels(n, budget, signals):
    thresholds = np.quantile(val_scores, 1.0 - level, axis=0, method="higher")
    if best is not None and np.mean(np.any(val_scores > thresholds, axis=1)) > budget:
      break
    best = thresholds
  return np.maximum(best, 1e-12)


@dataclasses.dataclass
class Combined:
  """The signals' detectors, each signal's threshold and the verdict (see the module)."""
  detectors: dict  # signal name -> ood.Detector, in SIGNALS order
  thresholds: np.ndarray | None = None  # [S] each signal's threshold on its own scale
  accept: float | None = None
  threshold: float = 1.0  # On the combined score: every signal's ratio to its threshold.

  @property
  def kind(self) -> str:
    """The features signal's detector kind (config.ood.kind)."""
    return self.detectors["features"].kind

  @property
  def signals(self) -> tuple[str, ...]:
    return tuple(self.detectors)

  def raw_scores(self, features, images) -> np.ndarray:
    """[N, S] each signal's own score."""
    if images is None and len(self.detectors) > 1:
      raise ValueError("The out-of-distribution score needs the images too (the thumbnail "
                       "signal sees them before the model's standardisation).")
    inputs = {"features": features,
              "thumbnail": None if images is None else thumbnails(np.asarray(images))}
    return np.stack([d.score(inputs[name]) for name, d in self.detectors.items()], axis=1)

  def signal_scores(self, features, images) -> np.ndarray:
    """[N, S] each signal's score over its threshold: above 1, that signal flags."""
    if self.thresholds is None:
      raise ValueError("The detector has no acceptance thresholds yet (set_threshold).")
    return (self.raw_scores(features, images) / self.thresholds).astype(np.float32)

  def score(self, features, images=None) -> np.ndarray:
    """Out-of-distribution score per image: the largest signal ratio (above 1: flagged)."""
    if len(features) == 0:
      return np.zeros(0, np.float32)
    return np.max(self.signal_scores(features, images), axis=1)

  def score_and_signal(self, features, images) -> tuple[np.ndarray, list[str]]:
    """(`score`, per image the signal with the largest ratio where flagged, else "")."""
    if len(features) == 0:
      return np.zeros(0, np.float32), []
    ratios = self.signal_scores(features, images)
    scores = np.max(ratios, axis=1)
    return scores, [self.signals[int(np.argmax(r))] if s > self.threshold else ""
                    for r, s in zip(ratios, scores)]

  def in_distribution(self, scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores) <= self.threshold

  def folder_verdict(self, in_distribution: np.ndarray) -> dict:
    flagged = ~np.asarray(in_distribution, bool)
    return ood.folder_shift(int(flagged.sum()), len(flagged), self.accept)

  def set_threshold(self, val_features, val_images, accept: float = ood.DEFAULT_ACCEPT) -> None:
    """Thresholds from the validation split (`common_thresholds`)."""
    if not 0 < accept <= 1:
      raise ValueError(f"accept must be in (0, 1]; got {accept}.")
    self.thresholds = common_thresholds(self.raw_scores(val_features, val_images), accept)
    self.accept = float(accept)

  def with_thresholds_from(self, val_features, val_images) -> "Combined":
    """A copy whose thresholds come from other validation images (calibration studies)."""
    copy = dataclasses.replace(self, thresholds=None)
    copy.set_threshold(val_features, val_images, self.accept)
    return copy

  def save(self, path: str) -> None:
    arrays = {"format": np.array(f"combined {_VERSION}"), "signals": np.array(self.signals),
              "thresholds": np.asarray(self.thresholds, np.float64),
              "accept": np.array(np.nan if self.accept is None else self.accept)}
    for j, (name, detector) in enumerate(self.detectors.items()):
      arrays[f"s{j}_kind"] = np.array(detector.kind)
      arrays.update({f"s{j}_{k}": v for k, v in detector.arrays.items()})
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load(path: str):
  """A Combined detector, or an `ood.Detector` from a file written before the signals
  existed (it scores as it did; `fit.load_or_fit` refits such a workdir)."""
  with np.load(path) as f:
    if "format" not in f.files:
      return ood.Detector.load(path)
    names = [str(s) for s in f["signals"]]
    detectors = {}
    for j, name in enumerate(names):
      p = f"s{j}_"
      arrays = {k[len(p):]: f[k] for k in f.files if k.startswith(p) and k != p + "kind"}
      detectors[name] = ood.Detector(str(f[p + "kind"]), arrays)
    accept = float(f["accept"])
    return Combined(detectors, np.asarray(f["thresholds"], np.float64),
                    None if np.isnan(accept) else accept)


def fit(features_detector: ood.Detector, train_images, val_features, val_images,
        accept: float = ood.DEFAULT_ACCEPT) -> Combined:
  """Both signals (the features one already fitted on training), thresholds on validation."""
  combined = Combined({"features": features_detector,
                       "thumbnail": fit_thumbnail(train_images)})
  combined.set_threshold(val_features, val_images, accept)
  return combined


def score_and_signal(detector, features, images) -> tuple[np.ndarray, list[str]]:
  """`Combined.score_and_signal`; "features" where a single-signal detector flags."""
  if isinstance(detector, Combined):
    return detector.score_and_signal(features, images)
  scores = detector.score(features)
  return scores, ["" if ok else "features" for ok in detector.in_distribution(scores)]


def counts(signals) -> dict[str, int]:
  """{signal: images it flagged} of `flagging_signal`'s answers."""
  names, n = np.unique([s for s in signals if s], return_counts=True)
  return {str(k): int(v) for k, v in zip(names, n)}


def describe_counts(by_signal: dict | None) -> str:
  """", flagged by the features (3) and the thumbnail (1)" or ""."""
  if not by_signal:
    return ""
  return ", flagged by " + " and ".join(f"the {k} ({v})" for k, v in by_signal.items())
