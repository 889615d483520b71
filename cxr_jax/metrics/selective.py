"""Selective prediction: the error rate of the images kept as fewer are kept.

A risk-coverage curve ranks images by a score (most trusted first), keeps the top
fraction (coverage) and measures the error rate among them (risk); its area (AURC,
the mean risk over all coverages) is lower for a ranking that drops errors first
(Geifman & El-Yaniv 2017). Two rankings are compared: the model's confidence (the
distance of its logit from the decision threshold's) and the out-of-distribution
score (lowest first).
"""

from __future__ import annotations

import numpy as np

from cxr_jax.metrics import calibration

POINTS = 21  # Coverages reported: 0, 5%, ..., 100% (the area uses every image).


def risk_coverage(errors, trust) -> dict:
  """{"coverage", "risk" (at POINTS coverages), "aurc"}; trust: higher is kept first."""
  errors = np.asarray(errors, np.float64)
  if errors.size == 0:
    return {"coverage": [], "risk": [], "aurc": None}
  order = np.argsort(-np.asarray(trust, np.float64), kind="stable")
  cumulative = np.cumsum(errors[order]) / np.arange(1, len(order) + 1)
  coverage = np.linspace(0, 1, POINTS)
  kept = np.clip(np.ceil(coverage * len(order)).astype(int), 1, len(order))
  return {"coverage": coverage.round(3).tolist(),
          "risk": [float(cumulative[k - 1]) for k in kept],
          "aurc": float(np.mean(cumulative))}


def confidence(probs, threshold: float) -> np.ndarray:
  """|logit(p) - logit(threshold)|: how far the decision is from being the other one."""
  return np.abs(calibration.probs_to_logits(probs) - calibration.probs_to_logits([threshold]))


def curves(labels, probs, threshold: float, ood_scores=None) -> dict:
  """Risk-coverage by confidence and, with OOD scores, by in-distribution-ness."""
  labels = np.asarray(labels)
  errors = (np.asarray(probs) >= threshold).astype(int) != labels
  out = {"threshold": float(threshold),
         "by_confidence": risk_coverage(errors, confidence(probs, threshold))}
  if ood_scores is not None:
    out["by_ood_score"] = risk_coverage(errors, -np.asarray(ood_scores))
  return out
