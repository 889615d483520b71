"""The one function that scores a labelled set: metrics at fixed operating points.

Nothing is fitted here: thresholds and the temperature come from validation
(`evaluation.fit`), so the same call serves validation, test and external folders in
`evaluate`, the report and training.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.metrics import calibration
from cxr_jax.metrics import classification as metrics_lib

VALIDATION_THRESHOLD = "validation_threshold"  # Maximises validation F1; chosen when training.


def calibrate_probs(probs, temperature: float) -> np.ndarray:
  """Temperature-scaled probabilities of stored (sigmoid) probabilities."""
  return calibration.apply_temperature(calibration.probs_to_logits(probs), temperature)


def score_set(labels, probs, thresholds: Mapping[str, float], temperature: float | None = None,
              n_boot: int = 0, seed: int = 0) -> dict:
  """Metrics of (labels, probs) at each named threshold ("at_<name>").

  With a temperature: ECE before and after temperature scaling. With n_boot > 0:
  95% bootstrap intervals ("ci95") at the first threshold.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  out = {"n": int(len(labels)),
         "counts": {n: int(np.sum(labels == i)) for i, n in enumerate(CLASS_NAMES)}}
  for name, threshold in thresholds.items():
    out[f"at_{name}"] = metrics_lib.binary_metrics(labels, probs, threshold)
  if temperature is not None:
    out["ece"] = calibration.expected_calibration_error(labels, probs)
    out["ece_calibrated"] = calibration.expected_calibration_error(
        labels, calibrate_probs(probs, temperature))
  first = next(iter(thresholds.values()))
  out["ci95"] = (calibration.bootstrap_ci(labels, probs, first, n_boot, seed)
                 if n_boot > 0 else None)
  return out


def predictions(paths, labels, probs) -> list[dict]:
  """Every prediction of a set, for JSON: [{"path", "label", "prob"}]."""
  return [{"path": p, "label": int(l), "prob": float(q)} for p, l, q in zip(paths, labels, probs)]


def prediction_arrays(rows: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(paths, labels, probs) of `predictions` rows."""
  return ([r["path"] for r in rows], np.array([r["label"] for r in rows], np.int64),
          np.array([r["prob"] for r in rows], np.float64))
