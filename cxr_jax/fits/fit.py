"""What is fitted after training, on the training and validation splits only, and cached.

  fitted = load_or_fit(predictor)   # .calibration (dict), .detector (ood.Detector),
                                    # .shift (folder_shift.Reference)

`workdir/shift.npz` holds the folder-level shift test's reference (validation's projected
features and probabilities, `folder_shift.Reference`); calibration.json's "site_estimate"
the margin of the folder accuracy interval (`site_calibration.fit_margin`).
`workdir/calibration.json` holds the temperature (minimising the validation NLL),
the validation-F1 threshold chosen when training, the thresholds reaching given
sensitivities on validation and the out-of-distribution detector's settings and
acceptance thresholds (quantiles of validation's scores); `workdir/ood.npz` holds the
detector (`ood_signals.Combined`: the model's features and the raw-image thumbnail),
fitted on the training split. Both record what they were fitted from (`source`): a
retrained model, another split or other OOD settings refit them.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.metrics import calibration
from cxr_jax.fits import folder_shift
from cxr_jax.fits import ood
from cxr_jax.fits import ood_signals
from cxr_jax.metrics import scoring
from cxr_jax.fits import site_calibration
from cxr_jax.fits import site_estimate

DEFAULT_TARGET_SENSITIVITY = 0.95
VERSION = 7  # Bumped when what is fitted changes: older caches are refitted.


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
  sensitivity = {target_key(t): calibration.threshold_for_sensitivity(labels, probs, t)
                 for t in targets}
  return {
      "temperature": temperature,
      "val_f1_threshold": float(val_f1_threshold),
      "sensitivity_thresholds": sensitivity,
      # Every rule fitted on validation (or none, for 0.5); the config names the default.
      "operating_points": {
          "val_f1": float(val_f1_threshold), "0.5": 0.5,
          "youden": calibration.youden_threshold(labels, probs),
          "f1_plateau": calibration.f1_plateau_threshold(labels, probs),
          **{f"sensitivity_{k}": v for k, v in sensitivity.items()}},
      "n_val": int(len(labels)),
      "val_counts": {n: int(np.sum(labels == i)) for i, n in enumerate(CLASS_NAMES)},
      "val_ece": calibration.expected_calibration_error(labels, probs),
      "val_ece_calibrated": calibration.expected_calibration_error(labels, calibrated),
  }


def source(predictor) -> dict:
  """What the cached fit depends on: a retrained model or another split refits."""
  data = predictor.config.data
  return {"version": VERSION, "model": predictor.model_name, "threshold": predictor.threshold,
          "ood": ood_settings(predictor.config),
          "site_estimate": [site_estimate.DEFAULT_ESTIMATOR, site_estimate.DEFAULT_SHIFT_MEASURE,
                            site_estimate.SHIFT_GATE],
          "best_epoch": predictor.meta.get("global_epoch"), "C": predictor.meta.get("C"),
          "data_dir": data.data_dir, "val_fraction": data.val_fraction,
          "split_seed": data.split_seed, "max_images_per_class": data.max_images_per_class,
          **({"split": data.split} if data.get("split", "random") != "random" else {})}


OPERATING_POINTS = ("0.5", "val_f1", "youden", "f1_plateau")


def operating_point_name(config) -> str:
  """config.operating_point."""
  return str(config.operating_point)


def operating_point(cal: dict, config) -> tuple[str, float]:
  """(name, threshold on the model's own probabilities) of the config's default rule."""
  name = operating_point_name(config)
  points = cal.get("operating_points") or {"val_f1": cal["val_f1_threshold"], "0.5": 0.5}
  if name not in points:
    raise ValueError(f"config.operating_point={name!r}: must be one of {sorted(points)}.")
  return name, float(points[name])


def ood_settings(config) -> dict:
  """config.ood as the detector's fit takes it."""
  return {"kind": config.ood.kind, "accept": float(config.ood.accept),
          "dims": int(config.ood.dims), "k": int(config.ood.k)}


@dataclasses.dataclass
class Fitted:
  """What was fitted after training: calibration.json's dict, the OOD detector and the
  folder-level shift test's reference."""
  calibration: dict
  detector: ood_signals.Combined | ood.Detector
  reused: bool
  shift: folder_shift.Reference | None = None

  def __iter__(self):  # (calibration, reused), as callers unpack it.
    return iter((self.calibration, self.reused))


def _read_cache(file_path: str) -> dict | None:
  try:
    return workdir_lib.read_json(file_path)
  except (OSError, ValueError) as e:
    logging.warning("Ignoring unreadable %s (%s); refitting.", file_path, e)
    return None


def _load_detector(workdir: str, cal: dict) -> ood_signals.Combined | None:
  path = workdir_lib.path(workdir, workdir_lib.OOD_FILE)
  if "ood" not in cal or not os.path.exists(path):
    return None
  try:
    detector = ood_signals.load(path)
  except (OSError, ValueError, KeyError) as e:
    logging.warning("Ignoring unreadable %s (%s); refitting.", path, e)
    return None
  if not isinstance(detector, ood_signals.Combined):  # One signal only: refit.
    return None
  same = list(detector.thresholds) == cal["ood"].get("signal_thresholds")
  return detector if same else None


def _load_shift(workdir: str) -> folder_shift.Reference | None:
  path = workdir_lib.path(workdir, workdir_lib.SHIFT_FILE)
  if not os.path.exists(path):
    return None
  try:
    return folder_shift.Reference.load(path)
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning("Ignoring unreadable %s (%s); refitting.", path, e)
    return None


def fit_detector(predictor, val_features, val_images, train=None, train_features=None
                 ) -> ood_signals.Combined:
  """The configured features detector and the thumbnail signal, fitted on the training
  split; thresholds from validation (`ood_signals`)."""
  settings = ood_settings(predictor.config)
  train = train if train is not None else data_lib.load(predictor.config.data, "train")
  if train_features is None:
    train_features = predictor.predict(train.images).features
  detector = predictor.own_detector(train_features)
  if detector is None:
    logging.info("Fitting the %s out-of-distribution detector on %d training images.",
                 settings["kind"], len(train))
    detector = ood.fit(settings["kind"], train_features, train.labels,
                       predictor.feature_layout, settings["dims"], settings["k"])
  return ood_signals.fit(detector, train.images, val_features, val_images,
                         settings["accept"])


def _save(workdir: str, cal: dict, detector: ood_signals.Combined,
          shift: folder_shift.Reference) -> None:
  if jax.process_index() != 0:  # One writer; every process holds the same fit.
    return
  try:
    detector.save(workdir_lib.path(workdir, workdir_lib.OOD_FILE))
    shift.save(workdir_lib.path(workdir, workdir_lib.SHIFT_FILE))
    workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.CALIBRATION_FILE), cal)
  except OSError as e:  # A read-only workdir still gets its predictions.
    logging.warning("Could not cache the calibration in %s: %s", workdir, e)


def load_or_fit(predictor, target: float | None = None, validation=None, train=None
                ) -> Fitted:
  """The workdir's calibration.json and ood.npz if they fit the model, else refitted.

  Refitting decodes the validation split (and, for the detector, the training split)
  from the saved config, or takes `validation` / `train` (DecodedSets of them). Fits are of
  the network's one view, whether or not `predictor` averages test-time views.
  """
  predictor = predictor.one_view
  file_path = workdir_lib.path(predictor.workdir, workdir_lib.CALIBRATION_FILE)
  cached = _read_cache(file_path) if os.path.exists(file_path) else None
  targets = {DEFAULT_TARGET_SENSITIVITY} | ({float(target)} if target is not None else set())
  if cached is not None and cached.get("source") == source(predictor) and all(
      target_key(t) in cached.get("sensitivity_thresholds", {}) for t in targets):
    detector = _load_detector(predictor.workdir, cached)
    shift = _load_shift(predictor.workdir)
    if detector is not None and shift is not None:
      return Fitted(cached, detector, True, shift)
  if cached is not None:
    targets |= {float(t) for t in cached.get("sensitivity_thresholds", {})}
  logging.info("Fitting temperature, operating points and the out-of-distribution threshold "
               "on the validation split of %s.", predictor.workdir)
  val = validation if validation is not None else data_lib.load(predictor.config.data,
                                                                "validation")
  out = predictor.predict(val.images)
  cal = fit_calibration(val.labels, out.probs, predictor.threshold, sorted(targets))
  train = train if train is not None else data_lib.load(predictor.config.data, "train")
  train_features = predictor.predict(train.images).features
  detector = fit_detector(predictor, out.features, val.images, train, train_features)
  cal["ood"] = {**ood_settings(predictor.config), "kind": detector.kind,
                "threshold": detector.threshold, "signals": list(detector.signals),
                "signal_thresholds": [float(t) for t in detector.thresholds],
                "n_val": len(val)}
  cal["source"] = source(predictor)
  _, threshold = operating_point(cal, predictor.config)
  shift = folder_shift.Reference.fit(train_features, out.features, out.probs, val.labels,
                                     threshold, cal["temperature"])
  logging.info("Calibrating the folder accuracy interval's margin on generated folders.")
  cal["site_estimate"] = site_calibration.fit_margin(predictor, detector, shift, train, val,
                                                     out.features)
  _save(predictor.workdir, cal, detector, shift)
  return Fitted(cal, detector, False, shift)
