"""Classification metrics (scikit-learn), PNEUMONIA = positive class (label 1)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from cxr_jax.data.splits import CLASS_NAMES

# Probabilities are clipped to [eps, 1 - eps] in the log loss: a float32 sigmoid saturates to
# exactly 0 or 1 for |logit| > ~17, and one such error then costs -log(1e-7) ~ 16, not inf.
LOG_LOSS_EPS = 1e-7


def log_loss(labels, probs, eps: float = LOG_LOSS_EPS) -> float:
  """Mean binary cross-entropy of PNEUMONIA probabilities (the one log loss of the project).

  Equal to scikit-learn's log_loss of the clipped float64 probabilities; its own clip is the
  machine epsilon of the input's dtype, so it differs (by ~1e-8 on real predictions) only
  where a probability lies within 1e-7 of 0 or 1.
  """
  labels = np.asarray(labels)
  probs = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
  return float(np.mean(-(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))))


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
  """Metrics of predicting PNEUMONIA when prob >= threshold.

  Returns n, counts per class, accuracy, precision, recall (sensitivity),
  specificity, f1, roc_auc (None when only one class is present), the confusion
  matrix [[TN, FP], [FN, TP]] (rows: true NORMAL, PNEUMONIA), the threshold and the
  log loss (`log_loss`; the same at every threshold).
  """
  labels = np.asarray(labels, dtype=np.int32)
  probs = np.asarray(probs, dtype=np.float64)
  if labels.shape != probs.shape or labels.ndim != 1:
    raise ValueError(f"labels {labels.shape} and probs {probs.shape} must be equal 1-D shapes.")
  if not np.all(np.isfinite(probs)):
    raise ValueError("Predicted probabilities contain NaN or inf.")
  preds = (probs >= threshold).astype(np.int32)
  both_classes = len(np.unique(labels)) == 2
  return {
      "n": int(len(labels)),
      "counts": {name: int(np.sum(labels == i)) for i, name in enumerate(CLASS_NAMES)},
      "threshold": float(threshold),
      "accuracy": float(skm.accuracy_score(labels, preds)),
      "precision": float(skm.precision_score(labels, preds, pos_label=1, zero_division=0)),
      "recall": float(skm.recall_score(labels, preds, pos_label=1, zero_division=0)),
      "specificity": float(skm.recall_score(labels, preds, pos_label=0, zero_division=0)),
      "f1": float(skm.f1_score(labels, preds, pos_label=1, zero_division=0)),
      "roc_auc": float(skm.roc_auc_score(labels, probs)) if both_classes else None,
      "confusion_matrix": skm.confusion_matrix(labels, preds, labels=[0, 1]).tolist(),
      "log_loss": log_loss(labels, probs),
  }


def f1_optimal_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
  """The decision threshold with the highest F1 on (labels, probs) — fit on validation only."""
  precision, recall, thresholds = skm.precision_recall_curve(labels, probs, pos_label=1)
  with np.errstate(divide="ignore", invalid="ignore"):
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
  # The last (precision, recall) pair has no threshold.
  return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def format_table(rows: dict[str, dict]) -> str:
  """A plain-text table of {row name: metrics dict}."""
  cols = ["n", "threshold", "accuracy", "precision", "recall", "specificity", "f1", "roc_auc"]
  lines = ["{:<24}".format("") + "".join(f"{c:>12}" for c in cols)]
  for name, m in rows.items():
    cells = []
    for c in cols:
      v = m.get(c)
      cells.append(f"{'-':>12}" if v is None else
                   f"{v:>12d}" if isinstance(v, int) else f"{v:>12.4f}")
    lines.append(f"{name:<24}" + "".join(cells))
  return "\n".join(lines)


def validation_metrics(labels, probs) -> dict:
  """binary_metrics at 0.5, with its log loss also as "loss" (the summaries' name for it)."""
  m = binary_metrics(labels, probs, threshold=0.5)
  m["loss"] = m["log_loss"]
  return m
