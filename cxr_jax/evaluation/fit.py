"""What is fitted after training, on the validation split only, and cached in the workdir.

  cal = load_or_fit(predictor)   # temperature, ECE, operating-point thresholds

`workdir/calibration.json` holds the temperature (minimising the validation NLL),
the validation-F1 threshold chosen when training, and the thresholds reaching given
sensitivities on validation. It records what it was fitted from (`source`): a
retrained model or another validation split refits it.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.evaluation import calibration
from cxr_jax.evaluation import scoring

DEFAULT_TARGET_SENSITIVITY = 0.95
VERSION = 1


def target_key(target: float) -> str:
  return f"{float(target):g}"


def fit_calibration(labels, probs, val_f1_threshold: float,
                    targets=(DEFAULT_TARGET_SENSITIVITY,)) -> dict:
  """Temperature, ECE and sensitivity-targeted thresholds from validation predictions.

  The thresholds apply to the model's own (uncalibrated) probabilities; temperature
  scaling is monotonic, so `scoring.calibrate_probs` of a threshold is the same
  operating point on the calibrated scale.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  temperature = calibration.fit_temperature(labels, calibration.probs_to_logits(probs))
  calibrated = scoring.calibrate_probs(probs, temperature)
  return {
      "temperature": temperature,
      "val_f1_threshold": float(val_f1_threshold),
      "sensitivity_thresholds": {target_key(t): calibration.threshold_for_sensitivity(
          labels, probs, t) for t in targets},
      "n_val": int(len(labels)),
      "val_counts": {n: int(np.sum(labels == i)) for i, n in enumerate(CLASS_NAMES)},
      "val_ece": calibration.expected_calibration_error(labels, probs),
      "val_ece_calibrated": calibration.expected_calibration_error(labels, calibrated),
  }


def source(predictor) -> dict:
  """What the cached fit depends on: a retrained model or another split refits."""
  data = predictor.config.data
  return {"version": VERSION, "model": predictor.model_name, "threshold": predictor.threshold,
          "best_epoch": predictor.meta.get("global_epoch"), "C": predictor.meta.get("C"),
          "data_dir": data.data_dir, "val_fraction": data.val_fraction,
          "split_seed": data.split_seed, "max_images_per_class": data.max_images_per_class}


def _read_cache(file_path: str) -> dict | None:
  try:
    return workdir_lib.read_json(file_path)
  except (OSError, ValueError) as e:
    logging.warning("Ignoring unreadable %s (%s); refitting.", file_path, e)
    return None


def load_or_fit(predictor, target: float | None = None, validation=None) -> tuple[dict, bool]:
  """(calibration, reused): the workdir's calibration.json if it fits the model, else refit.

  Refitting decodes the validation split from the saved config (or takes `validation`,
  a DecodedSet of it) and predicts it.
  """
  file_path = workdir_lib.path(predictor.workdir, workdir_lib.CALIBRATION_FILE)
  cached = _read_cache(file_path) if os.path.exists(file_path) else None
  targets = {DEFAULT_TARGET_SENSITIVITY} | ({float(target)} if target is not None else set())
  if cached is not None and cached.get("source") == source(predictor) and all(
      target_key(t) in cached.get("sensitivity_thresholds", {}) for t in targets):
    return cached, True
  if cached is not None:
    targets |= {float(t) for t in cached.get("sensitivity_thresholds", {})}
  logging.info("Fitting temperature and operating points on the validation split of %s.",
               predictor.workdir)
  val = validation if validation is not None else data_lib.load(predictor.config.data,
                                                                "validation")
  cal = fit_calibration(val.labels, predictor.probs(val.images), predictor.threshold,
                        sorted(targets))
  cal["source"] = source(predictor)
  try:
    workdir_lib.write_json(file_path, cal)
  except OSError as e:  # A read-only workdir still gets its predictions.
    logging.warning("Could not cache the calibration in %s: %s", file_path, e)
  return cal, False
