"""Out-of-distribution score: how unlike the training split an image's features are.

Detectors, fitted on the training split's features (`Predictor.predict(...).features`:
the model's last feature map pooled to a 2x2 grid, so position matters), with the
acceptance threshold a quantile of the validation split's scores:

  "mahalanobis"  A Gaussian per class with one shared covariance (Lee et al. 2018),
                 the covariance a probabilistic PCA (Tipping & Bishop 1999): the top
                 `dims` principal directions plus isotropic noise for the rest, so the
                 distance is full rank and an image that leaves the training subspace
                 (noise, a photo, text) is far. Score: the smaller squared Mahalanobis
                 distance to the two class means, per feature dimension.
  "knn"          Distance to the k-th nearest training image (Sun et al. 2022), cosine
                 of the features projected (uncentred, as the raw features are
                 normalised there) on the top `dims` principal directions.
  "pca_reconstruction"  For PCA + logistic regression (features are pixels): the mean
                 squared error of the model's own PCA reconstruction.

Nothing is fitted on test or on any out-of-distribution images.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from sklearn.decomposition import PCA

KINDS = ("mahalanobis", "knn", "pca_reconstruction")
DEFAULT_ACCEPT = 0.99
DEFAULT_DIMS = 256
DEFAULT_K = 10
_CHUNK = 1024


@dataclasses.dataclass
class Detector:
  kind: str
  arrays: dict  # name -> np.ndarray
  threshold: float | None = None  # Scores above it are out of distribution.
  accept: float | None = None  # The validation quantile the threshold is.

  def score(self, features: np.ndarray) -> np.ndarray:
    """Out-of-distribution score per row of `features` (higher: less like training)."""
    features = np.asarray(features, np.float32)
    return np.concatenate([_SCORERS[self.kind](self.arrays, features[i:i + _CHUNK])
                           for i in range(0, len(features), _CHUNK)]) if len(features) else \
        np.zeros(0, np.float32)

  def in_distribution(self, scores: np.ndarray) -> np.ndarray:
    if self.threshold is None:
      raise ValueError("The detector has no acceptance threshold yet (set_threshold).")
    return np.asarray(scores) <= self.threshold

  def set_threshold(self, val_scores: np.ndarray, accept: float = DEFAULT_ACCEPT) -> None:
    """Accept the fraction `accept` of the validation split (its quantile)."""
    if not 0 < accept <= 1:
      raise ValueError(f"accept must be in (0, 1]; got {accept}.")
    self.threshold = float(np.quantile(val_scores, accept, method="higher"))
    self.accept = float(accept)

  def save(self, path: str) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, kind=np.array(self.kind), threshold=np.array(
        np.nan if self.threshold is None else self.threshold),
             accept=np.array(np.nan if self.accept is None else self.accept), **self.arrays)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Detector":
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files if k not in ("kind", "threshold", "accept")}
      threshold, accept = float(f["threshold"]), float(f["accept"])
      kind = str(f["kind"])
    return cls(kind, arrays, None if np.isnan(threshold) else threshold,
               None if np.isnan(accept) else accept)


def _pca(features: np.ndarray, dims: int, seed: int = 0) -> PCA:
  dims = int(min(dims, features.shape[1], max(1, features.shape[0] - 1)))
  return PCA(n_components=dims, svd_solver="randomized" if dims < features.shape[1] // 2
             else "full", random_state=seed).fit(features)


def fit_mahalanobis(features, labels, dims: int = DEFAULT_DIMS) -> Detector:
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
  centred = features - means[labels]  # One shared covariance: class means removed.
  pca = _pca(centred, dims)
  noise = float(max(pca.noise_variance_, 1e-12))
  return Detector("mahalanobis", {
      "means": means.astype(np.float32), "components": pca.components_.astype(np.float32),
      "variances": np.maximum(pca.explained_variance_, noise).astype(np.float32),
      "noise_variance": np.float32(noise), "centre": pca.mean_.astype(np.float32)})


def _mahalanobis(a: dict, x: np.ndarray) -> np.ndarray:
  best = None
  for mean in a["means"]:
    y = x - mean - a["centre"]
    z = y @ a["components"].T
    inside = np.sum(z * z / a["variances"], axis=1)
    residual = np.maximum(np.sum(y * y, axis=1) - np.sum(z * z, axis=1), 0.0)
    d = inside + residual / a["noise_variance"]
    best = d if best is None else np.minimum(best, d)
  return (best / x.shape[1]).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_knn(features, labels=None, dims: int = DEFAULT_DIMS, k: int = DEFAULT_K) -> Detector:
  del labels
  features = np.asarray(features, np.float64)
  pca = _pca(features, dims)
  components = pca.components_.astype(np.float32)
  bank = _normalise(features @ components.T).astype(np.float32)
  return Detector("knn", {"components": components, "bank": bank,
                          "k": np.int32(min(k, len(bank)))})


def _knn(a: dict, x: np.ndarray) -> np.ndarray:
  q = _normalise(x @ a["components"].T)
  similarity = q @ a["bank"].T
  k = int(a["k"])
  kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
  return (1.0 - kth).astype(np.float32)  # Cosine distance to the k-th neighbour.


def pca_reconstruction(pca) -> Detector:
  """The detector of a fitted sklearn PCA (no fitting: the model's own subspace)."""
  return Detector("pca_reconstruction", {"mean": pca.mean_.astype(np.float32),
                                         "components": pca.components_.astype(np.float32)})


def _reconstruction(a: dict, x: np.ndarray) -> np.ndarray:
  y = x - a["mean"]
  z = y @ a["components"].T
  return np.mean(np.square(y - z @ a["components"]), axis=1).astype(np.float32)


_SCORERS = {"mahalanobis": _mahalanobis, "knn": _knn, "pca_reconstruction": _reconstruction}


def fit(kind: str, features, labels, dims: int = DEFAULT_DIMS, k: int = DEFAULT_K) -> Detector:
  if kind == "mahalanobis":
    return fit_mahalanobis(features, labels, dims)
  if kind == "knn":
    return fit_knn(features, labels, dims, k)
  raise ValueError(f"OOD detector kind must be one of {KINDS[:2]} for a neural network; "
                   f"got {kind!r} (config.ood.kind).")
