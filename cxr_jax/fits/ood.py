"""Out-of-distribution score: how unlike the training split an image's features are.

Detectors are fitted on the training split's features (`Predictor.predict(...).features`:
the model's feature maps at several depths, each pooled to a 2x2 grid so position
matters), one per depth, and combined: an image's score is the largest of its per-depth
scores, each divided by its median on the training split, so an image unusual in its
low-level statistics (inverted, blurred) or in its meaning (a photo, a page of text) is
far whatever the depth that sees it. The acceptance threshold is a quantile of the
validation split's scores. Per depth:

  "mahalanobis"  A Gaussian per class with one shared covariance (Lee et al. 2018),
                 the covariance a probabilistic PCA (Tipping & Bishop 1999): the top
                 `dims` principal directions plus isotropic noise for the rest, so the
                 distance is full rank and an image that leaves the training subspace
                 (noise, a photo, text) is far. Score: the smaller squared Mahalanobis
                 distance to the two class means, per feature dimension.
  "knn"          Distance to the k-th nearest training image (Sun et al. 2022), cosine
                 of the features projected (uncentred, as the raw features are
                 normalised there) on the top `dims` principal directions.
  "pca_reconstruction"  For PCA + logistic regression (features are pixels): the
                 model's own PCA, with the two statistics of PCA monitoring (Jackson &
                 Mudholkar 1979) tested apart: Hotelling's T^2 (the whitened distance
                 inside the subspace) and Q, the squared reconstruction error over the
                 noise variance. Each is scored two-sided (|log| of its ratio to the
                 training median): a blank or blurred image is reconstructed *too* well,
                 atypically likely under a Gaussian of pixels (Nalisnick et al. 2019),
                 and summed into one likelihood its small Q hid its large T^2.

Nothing is fitted on test or on any out-of-distribution images.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from sklearn.decomposition import PCA

KINDS = ("mahalanobis", "knn", "pca_reconstruction")
TWO_SIDED = ("pca_reconstruction",)
DEFAULT_ACCEPT = 0.99
DEFAULT_DIMS = 256
DEFAULT_K = 10
_CHUNK = 1024


def _prefix(arrays: dict, i: int) -> dict:
  p = f"l{i}_"
  return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


@dataclasses.dataclass
class Detector:
  kind: str
  arrays: dict  # name -> np.ndarray
  threshold: float | None = None  # Scores above it are out of distribution.
  accept: float | None = None  # The validation quantile the threshold is.

  @property
  def layout(self) -> list[int]:
    return [int(v) for v in self.arrays["layout"]]

  def layer_scores(self, features: np.ndarray) -> np.ndarray:
    """[N, statistics] per-depth scores (one per depth; two for pca_reconstruction), each
    divided by its training median."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[1] != sum(self.layout):
      raise ValueError(f"The detector expects {sum(self.layout)} features per image; got "
                       f"shape {features.shape}.")
    out, start = [], 0
    for i, width in enumerate(self.layout):
      ratio = self._raw(i, features[:, start:start + width]) / self.arrays[f"l{i}_scale"]
      # A likelihood is also atypical when too high (a blank image is "likelier" than any
      # X-ray under a Gaussian of pixels): two-sided, as a typicality test.
      out.append(np.abs(np.log(np.maximum(ratio, 1e-12))) if self.kind in TWO_SIDED
                 else ratio)
      start += width
    return np.concatenate(out, axis=1).astype(np.float32)

  def _raw(self, layer: int, block: np.ndarray) -> np.ndarray:
    """[N, statistics] unscaled scores of one depth's feature block."""
    arrays = _prefix(self.arrays, layer)
    raw = np.concatenate([_SCORERS[self.kind](arrays, block[j:j + _CHUNK])
                          for j in range(0, len(block), _CHUNK)])
    return raw.reshape(len(block), -1)

  def score(self, features: np.ndarray, images=None) -> np.ndarray:
    """Out-of-distribution score per row of `features` (higher: less like training).

    `images` is for the callers of `ood_signals.Combined`, which sees them; unused here.
    """
    del images
    if len(features) == 0:
      return np.zeros(0, np.float32)
    return np.max(self.layer_scores(features), axis=1)

  def in_distribution(self, scores: np.ndarray) -> np.ndarray:
    if self.threshold is None:
      raise ValueError("The detector has no acceptance threshold yet (set_threshold).")
    return np.asarray(scores) <= self.threshold

  def folder_verdict(self, in_distribution: np.ndarray) -> dict:
    """`folder_shift` of a folder's per-image verdicts: is it, as a whole, unlike training?"""
    flagged = ~np.asarray(in_distribution, bool)
    return folder_shift(int(flagged.sum()), len(flagged), self.accept)

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


def fit_mahalanobis(features, labels, dims: int = DEFAULT_DIMS) -> dict:
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
  centred = features - means[labels]  # One shared covariance: class means removed.
  # Half the dimensions at most: the rest is the noise term, which must not be empty.
  pca = _pca(centred, min(dims, max(1, features.shape[1] // 2)))
  total = float(np.mean(np.var(centred, axis=0)))
  noise = float(max(pca.noise_variance_, 1e-6 * total, 1e-12))
  return {"means": means.astype(np.float32), "components": pca.components_.astype(np.float32),
          "variances": np.maximum(pca.explained_variance_, noise).astype(np.float32),
          "noise_variance": np.float32(noise), "centre": pca.mean_.astype(np.float32)}


def mahalanobis_distance(a: dict, x, xp=np):
  """Each row's distance to the nearest class (per feature dimension), in the array module
  `xp`: NumPy here, jax.numpy in export's serving function, one formula for both."""
  best = None
  for mean in a["means"]:
    y = x - mean - a["centre"]
    z = y @ a["components"].T
    inside = xp.sum(z * z / a["variances"], axis=1)
    # The residual itself, not |y|^2 - |z|^2: that difference cancels in float32, and over
    # a noise variance of ~1e-9 its rounding was 1e-3 of the score, apart by runtime.
    residual = xp.sum(xp.square(y - z @ a["components"]), axis=1)
    d = inside + residual / a["noise_variance"]
    best = d if best is None else xp.minimum(best, d)
  return best / x.shape[1]


def _mahalanobis(a: dict, x: np.ndarray) -> np.ndarray:
  return mahalanobis_distance(a, x).astype(np.float32)


def normalise(x, xp=np):
  """Rows scaled to unit length (in NumPy or jax.numpy, as `mahalanobis_distance`)."""
  return x / xp.maximum(xp.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_knn(features, labels=None, dims: int = DEFAULT_DIMS, k: int = DEFAULT_K) -> dict:
  del labels
  features = np.asarray(features, np.float64)
  pca = _pca(features, dims)
  components = pca.components_.astype(np.float32)
  bank = normalise(features @ components.T).astype(np.float32)
  return {"components": components, "bank": bank, "k": np.int32(min(k, len(bank)))}


def _knn(a: dict, x: np.ndarray) -> np.ndarray:
  q = normalise(x @ a["components"].T)
  similarity = q @ a["bank"].T
  k = int(a["k"])
  kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
  return (1.0 - kth).astype(np.float32)  # Cosine distance to the k-th neighbour.


def pca_reconstruction(pca, train_pixels=None) -> Detector:
  """The detector of a fitted sklearn PCA: the model's own subspace as a probabilistic PCA."""
  noise = float(max(pca.noise_variance_, 1e-12))
  arrays = {"mean": pca.mean_.astype(np.float32),
            "components": pca.components_.astype(np.float32),
            "variances": np.maximum(pca.explained_variance_, noise).astype(np.float32),
            "noise_variance": np.float32(noise)}
  return _assemble("pca_reconstruction", [arrays], [len(pca.mean_)], train_pixels)


def reconstruction_statistics(a: dict, x, xp=np):
  """[N, 2]: Hotelling's T^2 inside the subspace and Q (SPE) over the noise variance, in
  the array module `xp` (as `mahalanobis_distance`)."""
  y = x - a["mean"]
  z = y @ a["components"].T
  q = xp.sum(xp.square(y - z @ a["components"]), axis=1) / a["noise_variance"]
  t2 = xp.sum(z * z / a["variances"], axis=1)
  return xp.stack([t2, q], axis=1)


def _reconstruction(a: dict, x: np.ndarray) -> np.ndarray:
  return reconstruction_statistics(a, x).astype(np.float32)


_SCORERS = {"mahalanobis": _mahalanobis, "knn": _knn, "pca_reconstruction": _reconstruction}


def _assemble(kind: str, per_layer: list[dict], layout: list[int], train_features) -> Detector:
  arrays = {"layout": np.asarray(layout, np.int64)}
  for i, layer in enumerate(per_layer):
    arrays.update({f"l{i}_{k}": v for k, v in layer.items()})
    arrays[f"l{i}_scale"] = np.float32(1.0)
  detector = Detector(kind, arrays)
  if train_features is not None:  # Each statistic divided by its median on training.
    train_features = np.asarray(train_features, np.float32)
    start = 0
    for i, width in enumerate(layout):
      raw = detector._raw(i, train_features[:, start:start + width])  # pylint: disable=protected-access
      arrays[f"l{i}_scale"] = np.maximum(np.median(raw, axis=0), 1e-12).astype(np.float32)
      start += width
  return detector


def fit(kind: str, features, labels, layout: list[int] | None = None,
        dims: int = DEFAULT_DIMS, k: int = DEFAULT_K) -> Detector:
  """One detector of `kind` per depth of `layout` (widths of the feature blocks)."""
  if kind not in ("mahalanobis", "knn"):
    raise ValueError(f"OOD detector kind must be one of {KINDS[:2]} for a neural network; "
                     f"got {kind!r} (config.ood.kind).")
  features = np.asarray(features, np.float32)
  layout = list(layout or [features.shape[1]])
  per_layer, start = [], 0
  for width in layout:
    block = features[:, start:start + width]
    per_layer.append(fit_mahalanobis(block, labels, dims) if kind == "mahalanobis"
                     else fit_knn(block, labels, dims, k))
    start += width
  return _assemble(kind, per_layer, layout, features)


SHIFT_ALPHA = 1e-3


def folder_shift(n_flagged: int, n: int, accept: float, alpha: float = SHIFT_ALPHA) -> dict:
  """Is a folder, as a whole, unlike the training data?

  Images like validation's are flagged with probability 1 - accept each, so a folder
  of such images has a Binomial(n, 1 - accept) flagged count; a one-sided binomial test
  says whether it has more. A per-image flag misses a site whose images are each only a
  little unusual; many of them together are not.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  expected = 1.0 - float(accept)
  p_value = (float(stats.binomtest(int(n_flagged), int(n), expected,
                                   alternative="greater").pvalue)
             if n > 0 and 0 < expected < 1 else 1.0)
  return {"expected_fraction": expected, "p_value": p_value, "alpha": alpha,
          "shifted": bool(p_value < alpha)}


def shift_warning(n_flagged: int, n: int, shift: dict) -> str | None:
  """A one-line warning for a shifted folder, or None."""
  if not shift["shifted"]:
    return None
  return (f"WARNING: {n_flagged} of {n} images ({n_flagged / n:.0%}) are unlike the training "
          f"data, where {shift['expected_fraction']:.0%} is expected (binomial p = "
          f"{shift['p_value']:.1e}): these images are not like the ones this model was "
          "trained and tested on (children aged 1-5, one hospital); do not trust its "
          "predictions here without a local evaluation.")
