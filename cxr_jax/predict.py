"""Scores image files (JPEG, PNG, DICOM, ...) with a trained workdir; one CSV row per file.

  python -m cxr_jax.predict --workdir=workdirs/cnn_v3 scans/ extra.dcm --output=preds.csv \
      [--gradcam_dir=overlays] [--target_sensitivity=0.95]

Files and folders (searched recursively) go in. Each file is decoded like the
training images (DICOM through `dicom_io.read_dicom`, everything else through
Pillow), converted and resized by `image_io.convert_and_resize`, and scored by the
workdir's best model. The probability written is temperature-scaled; the
temperature and the operating points are fitted on the workdir's validation split
once and cached in `<workdir>/calibration.json`. The label uses the validation-F1
threshold, or with --target_sensitivity the highest threshold that reaches that
sensitivity on validation. An unreadable file gets a row with the reason in `error`;
the others are scored.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time

import numpy as np
from absl import app
from absl import flags
from PIL import Image

from cxr_jax import calibration
from cxr_jax import dicom_io
from cxr_jax import evaluate
from cxr_jax import image_io
from cxr_jax import input_pipeline
from cxr_jax import models
from cxr_jax import splits

CALIBRATION_FILE = "calibration.json"
DEFAULT_TARGET_SENSITIVITY = 0.95
# Folders are searched for these; files named on the command line are always tried.
# Extension-less files are included because DICOM exports often have no extension.
SEARCHED_EXTENSIONS = splits.IMAGE_EXTENSIONS + (".dcm", ".dicom")
CSV_COLUMNS = ("path", "probability", "label", "label_name", "threshold", "operating_point",
               "raw_probability", "raw_threshold", "gradcam", "error")
GRADCAM_BATCH = 8  # Fixed batch: Grad-CAM compiles once per input shape.


# ---------------------------------------------------------------------------
# Calibration: temperature and operating points, fitted on validation only.


def target_key(target: float) -> str:
  return f"{float(target):g}"


def calibrate_probs(probs, temperature: float) -> np.ndarray:
  """Temperature-scaled probabilities of stored (sigmoid) probabilities."""
  return calibration.apply_temperature(calibration.probs_to_logits(probs), temperature)


def fit_calibration(labels, probs, val_f1_threshold: float,
                    targets=(DEFAULT_TARGET_SENSITIVITY,)) -> dict:
  """Temperature, ECE and sensitivity-targeted thresholds from validation predictions.

  The thresholds apply to the model's own (uncalibrated) probabilities; temperature
  scaling is monotonic, so `calibrate_probs` of a threshold is the same operating
  point on the calibrated scale.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  temperature = calibration.fit_temperature(labels, calibration.probs_to_logits(probs))
  calibrated = calibrate_probs(probs, temperature)
  return {
      "temperature": temperature,
      "val_f1_threshold": float(val_f1_threshold),
      "sensitivity_thresholds": {target_key(t): calibration.threshold_for_sensitivity(
          labels, probs, t) for t in targets},
      "n_val": int(len(labels)),
      "val_counts": {n: int(np.sum(labels == i)) for i, n in enumerate(splits.CLASS_NAMES)},
      "val_ece": calibration.expected_calibration_error(labels, probs),
      "val_ece_calibrated": calibration.expected_calibration_error(labels, calibrated),
  }


def _source(predictor: evaluate.Predictor) -> dict:
  """What the cached calibration depends on: a retrained model or another split refits."""
  data = predictor.config.data
  return {"model": predictor.config.model.name, "threshold": predictor.threshold,
          "best_epoch": predictor.meta.get("global_epoch"), "C": predictor.meta.get("C"),
          "data_dir": data.data_dir, "val_fraction": data.val_fraction,
          "split_seed": data.split_seed, "max_images_per_class": data.max_images_per_class}


def load_or_fit_calibration(workdir: str, predictor: evaluate.Predictor,
                            target: float | None = None) -> tuple[dict, bool]:
  """(calibration, reused): `<workdir>/calibration.json` if it fits the model, else refit.

  Refitting decodes the validation split from the saved config and predicts it.
  """
  path = os.path.join(workdir, CALIBRATION_FILE)
  source = _source(predictor)
  cached = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        cached = json.load(f)
    except (OSError, ValueError) as e:
      logging.warning("Ignoring unreadable %s (%s); refitting.", path, e)
  targets = {DEFAULT_TARGET_SENSITIVITY} | ({float(target)} if target is not None else set())
  if cached is not None and cached.get("source") == source and all(
      target_key(t) in cached.get("sensitivity_thresholds", {}) for t in targets):
    return cached, True
  if cached is not None:
    targets |= {float(t) for t in cached.get("sensitivity_thresholds", {})}
  logging.info("Fitting temperature and operating points on the validation split of %s.",
               workdir)
  _, val = input_pipeline.load_train_val(predictor.config.data)
  probs = predictor.predict(val)
  cal = fit_calibration(val.labels, probs, predictor.threshold, sorted(targets))
  cal["source"] = source
  try:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(cal, f, indent=2)
    os.replace(tmp, path)  # Never a half-written cache for the next call.
  except OSError as e:  # A read-only workdir still gets its predictions.
    logging.warning("Could not cache the calibration in %s: %s", path, e)
  return cal, False


# ---------------------------------------------------------------------------
# Files.


def expand_paths(paths) -> list[str]:
  """Files as given, folders searched recursively (sorted); hidden files are left out."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = []
      for root, dirs, files in os.walk(p):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
          ext = os.path.splitext(f)[1].lower()
          if not f.startswith(".") and (ext in SEARCHED_EXTENSIONS or not ext):
            found.append(os.path.join(root, f))
      out.extend(sorted(found))
    else:
      out.append(p)  # A missing file becomes a row with its error.
  return out


def open_any(path: str) -> Image.Image:
  """An 8-bit Pillow image of a DICOM or ordinary image file; ValueError/OSError if unreadable."""
  with open(path, "rb") as f:
    data = f.read()
  if dicom_io.is_dicom(data, path):
    # By path: a preamble-less .dcm file is recognised by its name.
    return Image.fromarray(dicom_io.read_dicom(path), mode="L")
  return image_io.open_image(data)


def display_image(img: Image.Image, max_side: int = 320) -> np.ndarray:
  """Gray uint8 (H, W) at the file's aspect ratio, for overlays."""
  img = img.convert("L")
  scale = max_side / max(img.width, img.height)
  if scale < 1:
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.BILINEAR)
  return np.asarray(img, np.uint8)


def read_files(paths, image_size: int, channels: int, keep_display: bool = False):
  """(model inputs uint8 [N,H,W,C] of the readable files, their indices, display images, errors).

  errors: {index in paths: reason}.
  """
  images, ok, displays, errors = [], [], [], {}
  for i, path in enumerate(paths):
    try:
      img = open_any(path)
      images.append(image_io.convert_and_resize(img, (image_size, image_size), channels))
      if keep_display:
        displays.append(display_image(img))
      ok.append(i)
    except (ValueError, OSError) as e:  # ImageDecodeError is a ValueError.
      errors[i] = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
  shape = (0, image_size, image_size, channels)
  return (np.stack(images) if images else np.zeros(shape, np.uint8)), ok, displays, errors


# ---------------------------------------------------------------------------
# Grad-CAM overlays.


def gradcam_heatmaps(model, variables, images: np.ndarray,
                     batch_size: int = GRADCAM_BATCH) -> np.ndarray:
  """Grad-CAM maps [N, H, W] of uint8 images, in fixed-size padded batches."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cxr_jax import augment  # pylint: disable=g-import-not-at-top
  from cxr_jax import gradcam  # pylint: disable=g-import-not-at-top
  out = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], np.uint8)])
    cams = gradcam.gradcam(model, variables, augment.to_float(jnp.asarray(batch)))
    out.append(np.asarray(cams)[:n])
  return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)


def load_flax_model(workdir: str, config):
  """(model, variables) of the best checkpoint, for Grad-CAM."""
  from cxr_jax import checkpoints  # pylint: disable=g-import-not-at-top
  variables, _ = checkpoints.restore_best(workdir)
  return models.create_model(config.model), variables


def _overlay_name(index: int, path: str) -> str:
  stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0])
  return f"{index:04d}_{stem or 'image'}.png"


# ---------------------------------------------------------------------------
# The command.


def predict_files(workdir: str, paths, output: str, gradcam_dir: str | None = None,
                  target_sensitivity: float | None = None, batch_size: int | None = None
                  ) -> dict:
  """Scores `paths` (files/folders), writes the CSV and returns a summary dict."""
  from cxr_jax import plots  # pylint: disable=g-import-not-at-top
  start = time.time()
  predictor = evaluate.load_predictor(workdir, batch_size)
  cal, reused = load_or_fit_calibration(workdir, predictor, target_sensitivity)
  temperature = cal["temperature"]
  if target_sensitivity is None:
    operating_point, raw_threshold = "val_f1", float(cal["val_f1_threshold"])
  else:
    operating_point = f"sensitivity_{target_key(target_sensitivity)}"
    raw_threshold = float(cal["sensitivity_thresholds"][target_key(target_sensitivity)])
  threshold = float(calibrate_probs([raw_threshold], temperature)[0])

  files = expand_paths(paths)
  if not files:
    raise ValueError(f"No image files found in {list(paths)}.")
  data_config = predictor.config.data
  is_flax = predictor.config.model.name not in models.SKLEARN_MODELS
  want_cam = gradcam_dir is not None and is_flax
  images, ok, displays, errors = read_files(files, data_config.image_size, data_config.channels,
                                            keep_display=want_cam)
  raw = np.zeros(0)
  if ok:
    data = input_pipeline.DecodedSet(images, np.zeros(len(ok), np.int32),
                                     [files[i] for i in ok], [""] * len(ok), skipped=[])
    raw = np.asarray(predictor.predict(data), np.float64)
  probs = calibrate_probs(raw, temperature) if ok else raw
  labels = (raw >= raw_threshold).astype(int)  # The model's own scale, as evaluate does.

  overlays: dict[int, str] = {}
  gradcam_note = None
  if gradcam_dir is not None and not is_flax:
    gradcam_note = (f"Grad-CAM is not available for {predictor.config.model.name} "
                    "(not a convolutional network); no overlays written.")
  elif want_cam and ok:
    model, variables = load_flax_model(workdir, predictor.config)
    cams = gradcam_heatmaps(model, variables, images)
    os.makedirs(gradcam_dir, exist_ok=True)
    for k, i in enumerate(ok):
      name = splits.CLASS_NAMES[labels[k]]
      overlays[i] = plots.gradcam_grid(
          [{"image": displays[k], "heatmap": cams[k],
            "title": f"{os.path.basename(files[i])}\np={probs[k]:.3f} -> {name}"}],
          os.path.join(gradcam_dir, _overlay_name(i, files[i])), ncols=1,
          title=f"Grad-CAM, {predictor.config.model.name}")  # Short: one narrow panel.

  rows = []
  position = {i: k for k, i in enumerate(ok)}
  for i, path in enumerate(files):
    if i in errors:
      rows.append({"path": path, "error": errors[i]})
      continue
    k = position[i]
    # 10 significant digits: label == (raw_probability >= raw_threshold) holds in the file.
    rows.append({"path": path, "probability": f"{probs[k]:.10g}", "label": int(labels[k]),
                 "label_name": splits.CLASS_NAMES[labels[k]], "threshold": f"{threshold:.10g}",
                 "operating_point": operating_point, "raw_probability": f"{raw[k]:.10g}",
                 "raw_threshold": f"{raw_threshold:.10g}", "gradcam": overlays.get(i, ""),
                 "error": ""})
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
  return {
      "workdir": workdir, "model": predictor.config.model.name, "output": output,
      "n_files": len(files), "n_scored": len(ok), "n_errors": len(errors),
      "errors": {files[i]: reason for i, reason in errors.items()},
      "n_pneumonia": int(labels.sum()), "n_normal": int(len(labels) - labels.sum()),
      "operating_point": operating_point, "threshold": threshold,
      "raw_threshold": raw_threshold, "temperature": temperature,
      "calibration_reused": reused, "n_overlays": len(overlays), "gradcam_note": gradcam_note,
      "seconds": time.time() - start,
  }


def format_summary(s: dict) -> str:
  lines = [
      f"{s['model']} ({s['workdir']}): {s['n_files']} files, {s['n_scored']} scored, "
      f"{s['n_errors']} unreadable.",
      f"  {s['n_pneumonia']} PNEUMONIA, {s['n_normal']} NORMAL at the {s['operating_point']} "
      f"operating point (calibrated threshold {s['threshold']:.4f}, model threshold "
      f"{s['raw_threshold']:.4f}; temperature {s['temperature']:.3f}, "
      f"{'cached in' if s['calibration_reused'] else 'fitted on validation, saved to'} "
      f"{CALIBRATION_FILE}).",
  ]
  for path, reason in list(s["errors"].items())[:10]:
    lines.append(f"  unreadable: {path}: {reason}")
  if s["n_errors"] > 10:
    lines.append(f"  ... and {s['n_errors'] - 10} more (see the error column).")
  if s["gradcam_note"]:
    lines.append("  " + s["gradcam_note"])
  elif s["n_overlays"]:
    lines.append(f"  {s['n_overlays']} Grad-CAM overlays written.")
  lines.append(f"Wrote {s['output']} in {s['seconds']:.1f}s.")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; called only when run as a program, so importing defines none."""
  flags.DEFINE_string("workdir", None, "Training workdir (config.json and the best model).")
  flags.DEFINE_string("output", "predictions.csv", "CSV to write, one row per file.")
  flags.DEFINE_string("gradcam_dir", None, "Write a Grad-CAM overlay PNG per file here "
                      "(Flax models only).")
  flags.DEFINE_float("target_sensitivity", None, "Label at the highest threshold reaching "
                     "this validation sensitivity instead of the validation-F1 threshold.")
  flags.DEFINE_integer("batch_size", None, "Inference batch size; default from the config.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  from cxr_jax import log_setup  # pylint: disable=g-import-not-at-top
  if len(argv) < 2:
    raise app.UsageError("Give one or more image files or folders to score.")
  log_setup.setup()
  summary = predict_files(FLAGS.workdir, argv[1:], FLAGS.output, FLAGS.gradcam_dir,
                          FLAGS.target_sensitivity, FLAGS.batch_size)
  print(format_summary(summary))


if __name__ == "__main__":
  from cxr_jax import malloc_tuning  # pylint: disable=g-import-not-at-top
  malloc_tuning.reexec_with_tunables()
  define_flags()
  app.run(main)
