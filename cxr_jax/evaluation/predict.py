"""Scoring image files (JPEG, PNG, DICOM, ...) with a trained workdir: one CSV row per file.

Each file is decoded like the training images (`data.decode`, DICOM included) and
scored by the workdir's model. The probability written is temperature-scaled; the
temperature and the operating points are fitted on the workdir's validation split
once and cached (`evaluation.fit`). The label uses the validation-F1 threshold, or
with `target_sensitivity` the highest threshold reaching that sensitivity on
validation. An unreadable file gets a row with the reason in `error`.
"""

from __future__ import annotations

import csv
import os
import re
import time

import numpy as np

from cxr_jax import data as data_lib
from cxr_jax.data import decode
from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.evaluation import figures
from cxr_jax.evaluation import fit
from cxr_jax.evaluation import predictor as predictor_lib
from cxr_jax.evaluation import scoring

CSV_COLUMNS = ("path", "probability", "label", "label_name", "threshold", "operating_point",
               "raw_probability", "raw_threshold", "gradcam", "error")


def operating_point(cal: dict, target_sensitivity: float | None) -> tuple[str, float]:
  """(name, threshold on the model's own probabilities) of the labelling rule."""
  if target_sensitivity is None:
    return "val_f1", float(cal["val_f1_threshold"])
  key = fit.target_key(target_sensitivity)
  return f"sensitivity_{key}", float(cal["sensitivity_thresholds"][key])


def overlay_name(index: int, path: str) -> str:
  stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0])
  return f"{index:04d}_{stem or 'image'}.png"


def write_overlays(predictor, images: np.ndarray, paths: list[str], probs, labels,
                   gradcam_dir: str, indices: list[int]) -> dict[int, str]:
  """One Grad-CAM overlay PNG per image, drawn over the file at its own aspect ratio."""
  cams = predictor.gradcam(images)
  os.makedirs(gradcam_dir, exist_ok=True)
  out = {}
  for k, (path, index) in enumerate(zip(paths, indices)):
    display = decode.display_image(decode.open_file(path))
    out[index] = figures.gradcam_grid(
        [{"image": display, "heatmap": cams[k],
          "title": f"{os.path.basename(path)}\np={probs[k]:.3f} -> {CLASS_NAMES[labels[k]]}"}],
        os.path.join(gradcam_dir, overlay_name(index, path)), ncols=1,
        title=f"Grad-CAM, {predictor.model_name}")  # Short: one narrow panel.
  return out


def _rows(files, position, errors, probs, raw, labels, threshold, raw_threshold, point,
          overlays) -> list[dict]:
  rows = []
  for i, file_path in enumerate(files):
    if file_path in errors:
      rows.append({"path": file_path, "error": errors[file_path]})
      continue
    k = position[file_path]
    # 10 significant digits: label == (raw_probability >= raw_threshold) holds in the file.
    rows.append({"path": file_path, "probability": f"{probs[k]:.10g}", "label": int(labels[k]),
                 "label_name": CLASS_NAMES[labels[k]], "threshold": f"{threshold:.10g}",
                 "operating_point": point, "raw_probability": f"{raw[k]:.10g}",
                 "raw_threshold": f"{raw_threshold:.10g}", "gradcam": overlays.get(i, ""),
                 "error": ""})
  return rows


def write_csv(rows: list[dict], output: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  tmp = output + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, output)


def predict_files(workdir: str, paths, output: str, gradcam_dir: str | None = None,
                  target_sensitivity: float | None = None, batch_size: int | None = None
                  ) -> dict:
  """Scores `paths` (files/folders), writes the CSV and returns a summary dict."""
  start = time.time()
  predictor = predictor_lib.load_predictor(workdir, batch_size)
  cal, reused = fit.load_or_fit(predictor, target_sensitivity)
  temperature = cal["temperature"]
  point, raw_threshold = operating_point(cal, target_sensitivity)
  threshold = float(scoring.calibrate_probs([raw_threshold], temperature)[0])
  files = data_lib.expand_paths(paths)
  if not files:
    raise ValueError(f"No image files found in {list(paths)}.")
  decoded = data_lib.load_files(files, predictor.preprocess)
  errors = {s["path"]: s["reason"] for s in decoded.skipped}
  raw = (np.asarray(predictor.probs(decoded.images), np.float64) if len(decoded)
         else np.zeros(0))
  probs = scoring.calibrate_probs(raw, temperature) if len(raw) else raw
  labels = (raw >= raw_threshold).astype(int)  # The model's own scale, as evaluate does.
  position = {p: k for k, p in enumerate(decoded.paths)}

  overlays, gradcam_note = {}, None
  if gradcam_dir is not None and not predictor.supports_gradcam:
    gradcam_note = (f"Grad-CAM is not available for {predictor.model_name} "
                    "(not a convolutional network); no overlays written.")
  elif gradcam_dir is not None and len(decoded):
    first_index = {}
    for i, p in enumerate(files):
      first_index.setdefault(p, i)
    indices = [first_index[p] for p in decoded.paths]
    overlays = write_overlays(predictor, decoded.images, decoded.paths, probs, labels,
                              gradcam_dir, indices)
  write_csv(_rows(files, position, errors, probs, raw, labels, threshold, raw_threshold, point,
                  overlays), output)
  return {
      "workdir": workdir, "model": predictor.model_name, "output": output,
      "n_files": len(files), "n_scored": len(decoded), "n_errors": len(errors),
      "errors": errors,
      "n_pneumonia": int(labels.sum()), "n_normal": int(len(labels) - labels.sum()),
      "operating_point": point, "threshold": threshold,
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
      "calibration.json).",
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
