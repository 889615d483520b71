"""Stress validation: the validation split under a fixed family of acquisition perturbations.

A random patient split shares the training collection's acquisition habits, so its log
loss rewards reading them. Scoring the same images as other sites would acquire them
(`perturbations.FAMILIES`, severities from the training split's 5th-95th percentiles)
measures what survives a change of habit. A recipe's stress score is the mean and the
worst family's log loss and ECE; nothing here sees test/.

  result = stress_scores(predictor, val, perturbations.Severities.fit(train.images), threshold)
"""

from __future__ import annotations

import numpy as np

from cxr_jax.metrics import calibration
from cxr_jax.metrics import classification as metrics_lib
from cxr_jax.fits import perturbations


def family_scores(labels, probs, threshold: float) -> dict:
  labels = np.asarray(labels)
  probs = np.clip(np.asarray(probs, np.float64), metrics_lib.LOG_LOSS_EPS,
                  1 - metrics_lib.LOG_LOSS_EPS)
  return {"log_loss": metrics_lib.log_loss(labels, probs),
          "ece": calibration.expected_calibration_error(labels, probs),
          "accuracy": float(np.mean((probs >= threshold) == (labels == 1))),
          "specificity": float(np.mean(probs[labels == 0] < threshold))
          if (labels == 0).any() else None}


def stress_scores(predictor, val, severities: perturbations.Severities, threshold: float,
                  seed: int = 0) -> dict:
  """{"clean", "families": {family: scores}, "mean", "worst"} of a labelled DecodedSet."""
  clean = family_scores(val.labels, predictor.predict(val.images).probs, threshold)
  families = {name: family_scores(val.labels, predictor.predict(images).probs, threshold)
              for name, images in perturbations.make_families(val.images, severities,
                                                              seed).items()}
  keys = ("log_loss", "ece", "accuracy")
  return {"clean": clean, "families": families,
          "mean": {k: float(np.mean([f[k] for f in families.values()])) for k in keys},
          "worst": {"log_loss": max(f["log_loss"] for f in families.values()),
                    "ece": max(f["ece"] for f in families.values()),
                    "accuracy": min(f["accuracy"] for f in families.values()),
                    "log_loss_family": max(families, key=lambda n: families[n]["log_loss"])}}
