"""Uncertainty and calibration of the PNEUMONIA probability (label 1 = positive class).

Bootstrap confidence intervals of the test metrics, a sensitivity-targeted decision
threshold, expected calibration error, reliability-curve data and temperature
scaling. Metrics come from scikit-learn with the definitions of
`cxr_jax.metrics.classification.binary_metrics`; nothing here needs JAX.
"""

from __future__ import annotations

import numpy as np
import sklearn
from scipy import optimize, special
from sklearn import calibration as skcal
from sklearn import metrics as skm

BOOTSTRAP_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")

# Temperatures searched by `fit_temperature`. Bounded because on separable data the
# NLL keeps falling as T -> 0 and an unbounded search would run off to 0.
T_MIN, T_MAX = 1e-2, 1e2


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels)
  probs = np.asarray(probs, dtype=np.float64)
  if labels.ndim != 1 or labels.shape != probs.shape:
    raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be equal 1-D shapes.")
  if len(labels) == 0:
    raise ValueError("labels and probs are empty.")
  if not np.all(np.isin(labels, (0, 1))):
    raise ValueError(f"labels must be 0 (NORMAL) or 1 (PNEUMONIA), got {np.unique(labels)}.")
  if not np.all(np.isfinite(probs)):
    raise ValueError("probs contain NaN or inf.")
  return labels.astype(np.int64), probs


def _check_probs01(probs: np.ndarray) -> None:
  if probs.min() < 0 or probs.max() > 1:
    raise ValueError(f"probs must lie in [0, 1], got [{probs.min()}, {probs.max()}].")


def _resample_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float,
                      idx: np.ndarray) -> dict[str, np.ndarray | None]:
  """binary_metrics' values for each resample idx[:, b]; roc_auc only where both classes."""
  # Column b of each matrix is resample b: scikit-learn scores all columns in one
  # multilabel call (average=None), ~10x faster than one call per resample.
  y_true, scores = labels[idx], probs[idx]
  y_pred = (scores >= threshold).astype(np.int64)
  # Inputs were validated by the caller; skipping sklearn's re-validation of every
  # column halves the time.
  with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0)
    # Specificity = recall of NORMAL: the same call with the classes swapped.
    specificity = skm.recall_score(1 - y_true, 1 - y_pred, average=None, zero_division=0)
    # Multilabel accuracy_score is subset accuracy, not per column; the per-column
    # fraction of correct predictions is the recall of "correct" against all-ones.
    correct = (y_true == y_pred).astype(np.int64)
    accuracy = skm.recall_score(np.ones_like(correct), correct, average=None, zero_division=0)
    both = y_true.min(axis=0) != y_true.max(axis=0)
    auc = None
    if both.any():
      # Masked columns come back column-major; sklearn slices columns one by one,
      # which is ~100x slower on that layout.
      auc = skm.roc_auc_score(np.ascontiguousarray(y_true[:, both]),
                              np.ascontiguousarray(scores[:, both]), average=None)
  return {"accuracy": accuracy, "precision": precision, "recall": recall,
          "specificity": specificity, "f1": f1, "roc_auc": auc}


def bootstrap_ci(labels, probs, threshold: float, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, tuple[float, float] | None]:
  """Percentile bootstrap (1 - alpha) confidence intervals of the test metrics.

  Images are resampled with replacement `n_boot` times; each resample is scored
  like `metrics.binary_metrics` (prediction = prob >= threshold, zero_division=0).
  Resamples with a single class are left out of the ROC AUC interval only.
  Returns {metric: (low, high)} for BOOTSTRAP_METRICS; roc_auc is None when no
  resample has both classes.
  """
  labels, probs = _check(labels, probs)
  if n_boot < 1:
    raise ValueError(f"n_boot must be >= 1, got {n_boot}.")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(labels), size=(len(labels), n_boot))
  samples = _resample_metrics(labels, probs, threshold, idx)
  q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
  out = {}
  for name in BOOTSTRAP_METRICS:
    values = samples[name]
    out[name] = None if values is None else tuple(float(v) for v in
                                                  np.percentile(np.atleast_1d(values), q))
  return out


def threshold_for_sensitivity(labels, probs, target: float = 0.95) -> float:
  """The highest threshold t with recall(PNEUMONIA | prob >= t) >= target on these labels.

  Fit on validation only. The result is one of the given probabilities, so the
  target is met exactly on the data it was fit on, not necessarily on the test set.
  """
  labels, probs = _check(labels, probs)
  if not 0 < target <= 1:
    raise ValueError(f"target sensitivity must be in (0, 1], got {target}.")
  if not labels.any():
    raise ValueError("No PNEUMONIA (label 1) examples: sensitivity is undefined.")
  # drop_intermediate=False: the first point reaching the target can sit inside a
  # vertical ROC segment, which the default would drop.
  _, tpr, thresholds = skm.roc_curve(labels, probs, pos_label=1, drop_intermediate=False)
  # Thresholds decrease and tpr increases along the curve; thresholds[0] is +inf (tpr 0).
  # The tolerance keeps e.g. tpr = 57/60 from missing target 0.95 by one ulp.
  i = int(np.argmax(tpr >= target - 1e-12))
  return float(thresholds[i])


def youden_threshold(labels, probs) -> float:
  """The threshold maximising sensitivity + specificity - 1 (Youden's J) on these labels."""
  labels, probs = _check(labels, probs)
  fpr, tpr, thresholds = skm.roc_curve(labels, probs, pos_label=1)
  return float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def f1_plateau_threshold(labels, probs, tolerance: float = 0.005) -> float:
  """The middle (in logit space) of the thresholds whose F1 is within `tolerance` of the best.

  On a nearly separable split the F1-optimal threshold is one point of a wide plateau;
  its middle is less sensitive to which single validation image sits where.
  """
  labels, probs = _check(labels, probs)
  precision, recall, thresholds = skm.precision_recall_curve(labels, probs, pos_label=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
  f1 = f1[:-1]  # The last (precision, recall) pair has no threshold.
  if not len(thresholds):
    return 0.5
  good = thresholds[f1 >= f1.max() - tolerance]
  lo, hi = probs_to_logits([good.min(), good.max()])
  return float(special.expit((lo + hi) / 2))


def _uniform_bin_ids(probs: np.ndarray, n_bins: int) -> np.ndarray:
  # Exactly the binning of sklearn.calibration.calibration_curve(strategy="uniform"),
  # so ECE and the plotted reliability curve agree.
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  return np.searchsorted(edges[1:-1], probs)


def expected_calibration_error(labels, probs, n_bins: int = 15) -> float:
  """Binary ECE of the PNEUMONIA probability over `n_bins` equal-width bins of [0, 1].

  ECE = sum_b (n_b / N) * |mean(label in b) - mean(prob in b)|, with bins over the
  predicted PNEUMONIA probability (not the top-label confidence max(p, 1 - p) of
  Guo et al. 2017; the two differ for a binary classifier).
  """
  labels, probs = _check(labels, probs)
  _check_probs01(probs)
  if n_bins < 1:
    raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
  ids = _uniform_bin_ids(probs, n_bins)
  counts = np.bincount(ids, minlength=n_bins)
  gap = np.abs(np.bincount(ids, weights=labels, minlength=n_bins)
               - np.bincount(ids, weights=probs, minlength=n_bins))
  # sum_b (n_b / N) * |sum_y / n_b - sum_p / n_b| = sum_b |sum_y - sum_p| / N.
  return float(gap.sum() / counts.sum())


def reliability_curve(labels, probs, n_bins: int = 15) -> dict[str, np.ndarray]:
  """Reliability-diagram data over equal-width bins (empty bins left out).

  Returns mean_predicted (x), fraction_positive (y) and count per non-empty bin.
  """
  labels, probs = _check(labels, probs)
  _check_probs01(probs)
  fraction_positive, mean_predicted = skcal.calibration_curve(
      labels, probs, pos_label=1, n_bins=n_bins, strategy="uniform")
  counts = np.bincount(_uniform_bin_ids(probs, n_bins), minlength=n_bins)
  return {"mean_predicted": mean_predicted, "fraction_positive": fraction_positive,
          "count": counts[counts > 0]}


def _nll(labels: np.ndarray, logits: np.ndarray) -> float:
  # Mean binary cross-entropy from logits: log(1 + e^-z) for positives, log(1 + e^z)
  # for negatives. skm.log_loss takes probabilities, which saturate for large |z|.
  signed = np.where(labels == 1, -logits, logits)
  return float(np.mean(np.logaddexp(0.0, signed)))


def fit_temperature(labels, logits) -> float:
  """Temperature T minimising the validation NLL of sigmoid(logits / T).

  Bounded 1-D search over log T in [log T_MIN, log T_MAX]: on separable data the
  NLL decreases monotonically towards T -> 0 and the result is T_MIN.
  """
  labels, logits = _check(labels, logits)
  res = optimize.minimize_scalar(lambda log_t: _nll(labels, logits / np.exp(log_t)),
                                 bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded",
                                 options={"xatol": 1e-6})
  return float(np.exp(res.x))


def apply_temperature(logits, temperature: float) -> np.ndarray:
  """Calibrated PNEUMONIA probabilities sigmoid(logits / temperature)."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  # expit: no overflow and full relative precision for large |z|.
  return special.expit(np.asarray(logits, dtype=np.float64) / temperature)


def probs_to_logits(probs, eps: float = 1e-7) -> np.ndarray:
  """log(p / (1 - p)), clipped to [eps, 1 - eps]: logits of stored probabilities.

  Lossy where float32 sigmoid saturated (|logit| > ~16); keep the model's logits
  when they are available.
  """
  p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
  return np.log(p) - np.log1p(-p)
