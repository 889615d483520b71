"""Is a folder like the validation split, and how accurate will the model be on it?

The per-image out-of-distribution score (`ood`) finds images that are each far from the
training data. A site whose images are each typical but, together, different (another
exposure habit, another class mix) passes it. Two folder-level two-sample tests of the
folder against the validation split (the reference), in the manner of black-box shift
detection (Rabanser et al. 2019, "Failing Loudly"):

  features  MMD^2 (Gretton et al. 2012) with a Gaussian kernel on the model's features,
            projected on the training split's top principal directions and whitened;
            the bandwidth is the median distance within the reference. Permutation
            p-value. Effect size: MMD^2 in standard deviations of its permutation null.
  outputs   Two-sample Kolmogorov-Smirnov on the predicted probabilities (scipy): a
            changed class mix or changed confidence. Effect size: the KS statistic D
            and the predicted-PNEUMONIA rate beside validation's.

The folder is called shifted when the Bonferroni-combined p-value, 2 min(p_features,
p_outputs), is below `alpha`. A shifted verdict says the folder's images differ from
validation's; it does not say the model is wrong there, and "not shifted" on a small
folder may be a lack of power rather than evidence of similarity.

Label-free accuracy estimates at the default operating point, fitted on validation:

  atc  Average Thresholded Confidence (Garg et al. 2022): the score is the margin
       |logit(p) - logit(threshold)|; the cut t makes validation's fraction of scores
       above t equal its accuracy, and the estimate is the folder's fraction above t.
  doc  Difference of confidences (Guillory et al. 2021): validation accuracy minus the
       drop of the mean calibrated confidence in the decision from validation to the
       folder.

Both come with a bootstrap interval over the folder's images (sampling error only; the
method's own error under shift is measured on generated folders whose labels are known,
docs/folder_shift.md). Nothing here is fitted on the folder being judged or on test/.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from scipy import stats
from sklearn.decomposition import PCA

from cxr_jax.metrics import calibration

ALPHA = 0.05
DIMS = 32
N_PERMUTATIONS = 1000
MAX_FOLDER = 2000  # Larger folders are subsampled for MMD (its kernel matrix is n^2).
ESTIMATORS = ("atc", "doc")
# By the rule of docs/folder_shift.md (lower median absolute error on folders generated
# from validation; benchmarks/folder_shift): doc 0.011 against atc 0.012.
DEFAULT_ESTIMATOR = "doc"
N_BOOT = 500
_PERMUTATION_CHUNK = 100


@dataclasses.dataclass
class Reference:
  """What a folder is compared with, all from the training and validation splits."""
  mean: np.ndarray  # [D] training features' mean
  components: np.ndarray  # [d, D] their top principal directions, divided by their std
  features: np.ndarray  # [n_ref, d] validation's projected features
  probs: np.ndarray  # [n_ref] validation's predicted probabilities
  labels: np.ndarray  # [n_ref] validation's labels
  threshold: float  # The default operating point, on the model's own probabilities
  temperature: float
  bandwidth: float  # Gaussian kernel width: the median distance within the reference
  atc_cut: float

  @classmethod
  def fit(cls, train_features, val_features, val_probs, val_labels, threshold: float,
          temperature: float, dims: int = DIMS, seed: int = 0) -> "Reference":
    train_features = np.asarray(train_features, np.float32)
    dims = int(min(dims, train_features.shape[1], max(1, len(train_features) - 1)))
    pca = PCA(n_components=dims, svd_solver="randomized" if dims < train_features.shape[1] // 2
              else "full", random_state=seed).fit(train_features)
    scale = np.sqrt(np.maximum(pca.explained_variance_, 1e-12))
    components = (pca.components_ / scale[:, None]).astype(np.float32)
    mean = pca.mean_.astype(np.float32)
    projected = (np.asarray(val_features, np.float32) - mean) @ components.T
    probs, labels = np.asarray(val_probs, np.float64), np.asarray(val_labels, np.int64)
    margin = decision_margin(probs, threshold)
    return cls(mean, components, projected.astype(np.float32), probs, labels, float(threshold),
               float(temperature), median_distance(projected),
               atc_cut(margin, accuracy(labels, probs, threshold)))

  def project(self, features) -> np.ndarray:
    return ((np.asarray(features, np.float32) - self.mean) @ self.components.T).astype(np.float32)

  def subset(self, index) -> "Reference":
    """The reference restricted to some validation images (for calibration studies)."""
    index = np.asarray(index)
    probs, labels = self.probs[index], self.labels[index]
    margin = decision_margin(probs, self.threshold)
    return dataclasses.replace(
        self, features=self.features[index], probs=probs, labels=labels,
        bandwidth=median_distance(self.features[index]),
        atc_cut=atc_cut(margin, accuracy(labels, probs, self.threshold)))

  def save(self, path: str) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{f.name: np.asarray(getattr(self, f.name))
                     for f in dataclasses.fields(self)})
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Reference":
    with np.load(path) as f:
      values = {name: f[name] for name in f.files}
    return cls(**{k: (float(v) if v.ndim == 0 else v) for k, v in values.items()})


def accuracy(labels, probs, threshold: float) -> float:
  return float(np.mean((np.asarray(probs) >= threshold) == (np.asarray(labels) == 1)))


def decision_margin(probs, threshold: float) -> np.ndarray:
  """|logit(p) - logit(threshold)|: how far each answer is from changing."""
  logits = calibration.probs_to_logits(np.asarray(probs, np.float64))
  return np.abs(logits - float(calibration.probs_to_logits(np.array([threshold]))[0]))


def atc_cut(margin: np.ndarray, target_accuracy: float) -> float:
  """The t with mean(margin > t) = target_accuracy on validation (Garg et al. 2022)."""
  return float(np.quantile(margin, 1.0 - target_accuracy))


def decision_confidence(probs, threshold: float, temperature: float) -> np.ndarray:
  """Calibrated probability that each answer at `threshold` is right."""
  calibrated = calibration.apply_temperature(
      calibration.probs_to_logits(np.asarray(probs, np.float64)), temperature)
  return np.where(np.asarray(probs) >= threshold, calibrated, 1.0 - calibrated)


def median_distance(x: np.ndarray) -> float:
  distances = np.sqrt(squared_distances(x, x)[np.triu_indices(len(x), k=1)])
  return float(max(np.median(distances), 1e-6)) if len(distances) else 1.0


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def mmd_test(reference: np.ndarray, sample: np.ndarray, bandwidth: float,
             n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict:
  """Biased MMD^2 with a Gaussian kernel and its permutation p-value.

  With w = +1/m on the reference and -1/n on the sample, MMD^2 = w'Kw; a permutation
  relabels w, so every null statistic is one column of W'KW, computed in chunks.
  """
  pooled = np.concatenate([reference, sample]).astype(np.float64)
  m, n = len(reference), len(sample)
  kernel = np.exp(-squared_distances(pooled, pooled) / (2.0 * bandwidth ** 2))
  weights = np.r_[np.full(m, 1.0 / m), np.full(n, -1.0 / n)]
  observed = float(weights @ kernel @ weights)
  rng = np.random.default_rng(seed)
  null = []
  for start in range(0, n_permutations, _PERMUTATION_CHUNK):
    count = min(_PERMUTATION_CHUNK, n_permutations - start)
    w = np.stack([rng.permutation(weights) for _ in range(count)], axis=1)
    null.append(np.sum(w * (kernel @ w), axis=0))
  null = np.concatenate(null)
  spread = float(np.std(null))
  return {"statistic": observed, "null_quantile_95": float(np.quantile(null, 0.95)),
          "p_value": float((1 + np.sum(null >= observed)) / (1 + n_permutations)),
          "effect_size": float((observed - np.mean(null)) / spread) if spread > 0 else 0.0}


def outputs_test(reference_probs, probs, threshold: float) -> dict:
  ks = stats.ks_2samp(np.asarray(reference_probs), np.asarray(probs))
  return {"statistic": float(ks.statistic), "p_value": float(ks.pvalue),
          "effect_size": float(ks.statistic),
          "predicted_pneumonia_rate": float(np.mean(np.asarray(probs) >= threshold)),
          "reference_pneumonia_rate": float(np.mean(np.asarray(reference_probs) >= threshold))}


def shift_test(ref: Reference, features, probs, alpha: float = ALPHA, seed: int = 0,
               n_permutations: int = N_PERMUTATIONS, projected: bool = False) -> dict:
  """Both tests of a folder (its features and probabilities) against the reference.

  projected: `features` are already `ref.project`ed (rows of another reference's features).
  """
  probs = np.asarray(probs, np.float64)
  if len(probs) < 2:
    return {"n": int(len(probs)), "alpha": alpha, "p_value": 1.0, "shifted": False,
            "note": "fewer than 2 images: no folder-level test"}
  projected = np.asarray(features, np.float32) if projected else ref.project(features)
  if len(projected) > MAX_FOLDER:
    keep = np.random.default_rng(seed).choice(len(projected), MAX_FOLDER, replace=False)
    projected = projected[keep]
  feature_result = mmd_test(ref.features, projected, ref.bandwidth, n_permutations, seed)
  output_result = outputs_test(ref.probs, probs, ref.threshold)
  combined = min(1.0, 2.0 * min(feature_result["p_value"], output_result["p_value"]))
  return {"n": int(len(probs)), "n_reference": int(len(ref.probs)), "alpha": alpha,
          "features": {"test": "MMD^2, Gaussian kernel, permutations", **feature_result,
                       "n_used": int(len(projected))},
          "outputs": {"test": "Kolmogorov-Smirnov on probabilities", **output_result},
          "p_value": combined, "shifted": bool(combined < alpha)}


def estimate_accuracy(ref: Reference, probs, method: str = DEFAULT_ESTIMATOR,
                      n_boot: int = N_BOOT, seed: int = 0) -> dict:
  """Label-free accuracy at the reference's operating point, with a 95% bootstrap interval."""
  if method not in ESTIMATORS:
    raise ValueError(f"accuracy estimator must be one of {ESTIMATORS}; got {method!r}.")
  probs = np.asarray(probs, np.float64)
  if len(probs) == 0:
    return {"method": method, "estimate": None, "ci95": None, "n": 0}
  per_image = _per_image(ref, probs, method)
  rng = np.random.default_rng(seed)
  boots = [per_image[rng.integers(0, len(per_image), len(per_image))].mean()
           for _ in range(n_boot)]
  offset = _offset(ref, method)
  low, high = np.quantile(boots, [0.025, 0.975]) + offset
  return {"method": method, "estimate": float(np.clip(per_image.mean() + offset, 0.0, 1.0)),
          "ci95": [float(np.clip(low, 0, 1)), float(np.clip(high, 0, 1))],
          "validation_accuracy": accuracy(ref.labels, ref.probs, ref.threshold),
          "n": int(len(probs))}


def _per_image(ref: Reference, probs: np.ndarray, method: str) -> np.ndarray:
  if method == "atc":
    return (decision_margin(probs, ref.threshold) > ref.atc_cut).astype(np.float64)
  return decision_confidence(probs, ref.threshold, ref.temperature)


def _offset(ref: Reference, method: str) -> float:
  """doc: validation's accuracy minus its mean confidence (0 for atc, whose cut holds it)."""
  if method == "atc":
    return 0.0
  confidence = decision_confidence(ref.probs, ref.threshold, ref.temperature)
  return accuracy(ref.labels, ref.probs, ref.threshold) - float(np.mean(confidence))


def judge(ref: Reference, features, probs, method: str = DEFAULT_ESTIMATOR,
          alpha: float = ALPHA) -> dict:
  """The folder's verdict and accuracy estimate, as `evaluate`, `predict` and the page show."""
  result = shift_test(ref, features, probs, alpha)
  result["estimated_accuracy"] = estimate_accuracy(ref, probs, method)
  result["summary"] = summary(result)
  return result


def summary(result: dict) -> str:
  """Plain words: what the verdict means and what it does not. The folder's accuracy is
  `site_estimate`'s answer: this point estimate alone has no interval to stand behind."""
  if result["estimated_accuracy"].get("estimate") is None or "features" not in result:
    return "Too few images for a folder-level answer."
  verdict = ("UNLIKE the validation data" if result["shifted"]
             else "not distinguishable from the validation data")
  return (f"Folder of {result['n']} images: {verdict} (combined p = {result['p_value']:.2g} "
          f"at alpha {result['alpha']}; features MMD p = {result['features']['p_value']:.2g}, "
          f"outputs KS p = {result['outputs']['p_value']:.2g}). The test says whether these "
          "images differ from validation's, not whether the model is right on them.")
