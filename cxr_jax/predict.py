"""Scoring image files (JPEG, PNG, DICOM, ...) with a trained workdir: one CSV row per file.

Each file is decoded like the training images (`data.decode`, DICOM included) and
scored by the workdir's model. The probability written is temperature-scaled; the
temperature, the operating points and the out-of-distribution detector are fitted
once (`evaluation.fit`) and cached. The label uses the config's operating point
(config.operating_point), or with `target_sensitivity` the highest threshold reaching
that sensitivity on validation. An image whose out-of-distribution score is above the
acceptance threshold is labelled OUT_OF_DISTRIBUTION (its probability stays in its
own column). An unreadable file gets a row with the reason in `error`.
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
from cxr_jax import registry
from cxr_jax.fits import fit
from cxr_jax.fits import folder_shift
from cxr_jax.fits import ood
from cxr_jax.fits import ood_signals
from cxr_jax.fits import site_estimate
from cxr_jax.inference import adaptation
from cxr_jax.metrics import scoring
from cxr_jax.report import figures

CSV_COLUMNS = ("path", "probability", "label", "label_name", "threshold", "operating_point",
               "raw_probability", "raw_threshold", "ood_score", "in_distribution", "ood_signal",
               "adapted_probability", "adapted_label_name", "adaptation", "gradcam", "error")
OUT_OF_DISTRIBUTION = "OUT_OF_DISTRIBUTION"


def operating_point(cal: dict, config, target_sensitivity: float | None) -> tuple[str, float]:
  """(name, threshold on the model's own probabilities) of the labelling rule."""
  if target_sensitivity is None:
    return fit.operating_point(cal, config)
  key = fit.target_key(target_sensitivity)
  return f"sensitivity_{key}", float(cal["sensitivity_thresholds"][key])


def overlay_name(index: int, path: str) -> str:
  stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0])
  return f"{index:04d}_{stem or 'image'}.png"


def write_overlays(predictor, images: np.ndarray, paths: list[str], probs, names,
                   gradcam_dir: str, indices: list[int]) -> dict[int, str]:
  """One Grad-CAM overlay PNG per image, drawn over the file at its own aspect ratio."""
  cams = predictor.gradcam(images)
  os.makedirs(gradcam_dir, exist_ok=True)
  out = {}
  for k, (path, index) in enumerate(zip(paths, indices)):
    display = decode.display_image(decode.open_file(path))
    out[index] = figures.gradcam_grid(
        [{"image": display, "heatmap": cams[k],
          "title": f"{os.path.basename(path)}\np={probs[k]:.3f} -> {names[k]}"}],
        os.path.join(gradcam_dir, overlay_name(index, path)), ncols=1,
        title=f"Grad-CAM, {predictor.model_name}")  # Short: one narrow panel.
  return out


def _rows(files, position, errors, scored: dict, overlays) -> list[dict]:
  rows = []
  for i, file_path in enumerate(files):
    if file_path in errors:
      rows.append({"path": file_path, "error": errors[file_path]})
      continue
    k = position[file_path]
    accepted = bool(scored["accepted"][k])
    label = int(scored["labels"][k])
    # 10 significant digits: label == (raw_probability >= raw_threshold) holds in the file.
    rows.append({"path": file_path, "probability": f"{scored['probs'][k]:.10g}",
                 "label": label if accepted else "",
                 "label_name": CLASS_NAMES[label] if accepted else OUT_OF_DISTRIBUTION,
                 "threshold": f"{scored['threshold']:.10g}", "operating_point": scored["point"],
                 "raw_probability": f"{scored['raw'][k]:.10g}",
                 "raw_threshold": f"{scored['raw_threshold']:.10g}",
                 "ood_score": f"{scored['ood_scores'][k]:.6g}", "in_distribution": int(accepted),
                 "ood_signal": scored["ood_signals"][k],
                 **_adapted_cells(scored.get("adapted"), k, accepted),
                 "gradcam": overlays.get(i, ""), "error": ""})
  return rows


def _adapted_cells(adapted: dict | None, k: int, accepted: bool) -> dict:
  """The adapted answer beside the model's own (empty where none was made)."""
  if not adapted or adapted["method"] == "none":
    return {"adaptation": adapted["method"] if adapted else ""}
  label = int(adapted["labels"][k])
  return {"adapted_probability": f"{adapted['probs'][k]:.10g}",
          "adapted_label_name": CLASS_NAMES[label] if accepted else OUT_OF_DISTRIBUTION,
          "adaptation": adapted["method"]}


def write_csv(rows: list[dict], output: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  tmp = output + ".tmp"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, output)


def predict_files(workdir: str, paths, output: str, gradcam_dir: str | None = None,
                  target_sensitivity: float | None = None, batch_size: int | None = None,
                  tta: bool | None = None, adapt: str = "none") -> dict:
  """Scores `paths` (files/folders), writes the CSV and returns a summary dict.

  adapt: label-free adaptation to these files (adaptation.CHOICES), answered beside the
  model's own; its labels at 0.5 of the adapted posteriors.
  """
  start = time.time()
  files = data_lib.expand_paths(paths)  # Before the model: a wrong path fails at once.
  if not files:
    raise ValueError(f"No image files found in {list(paths)}.")
  predictor = registry.load_predictor(workdir, batch_size, tta=tta)
  fitted = fit.load_or_fit(predictor, target_sensitivity)
  decoded = data_lib.load_files(files, predictor.preprocess)
  errors = {s["path"]: s["reason"] for s in decoded.skipped}
  scored = score_images(predictor, fitted, decoded.images, target_sensitivity, adapt)
  probs, labels = scored["probs"], scored["labels"]
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
    names = [CLASS_NAMES[label] if ok else OUT_OF_DISTRIBUTION
             for label, ok in zip(labels, scored["accepted"])]
    overlays = write_overlays(predictor, decoded.images, decoded.paths, probs, names,
                              gradcam_dir, indices)
  write_csv(_rows(files, position, errors, scored, overlays), output)
  accepted = scored["accepted"]
  return {
      "workdir": workdir, "model": predictor.model_name, "output": output,
      "n_files": len(files), "n_scored": len(decoded), "n_errors": len(errors),
      "errors": errors,
      "n_pneumonia": int((labels * accepted).sum()),
      "n_normal": int(((1 - labels) * accepted).sum()),
      "n_out_of_distribution": int((~accepted).sum()),
      "ood_kind": fitted.detector.kind, "ood_threshold": fitted.detector.threshold,
      "ood_flagged_by": ood_signals.counts(scored["ood_signals"]),
      "folder_shift": fitted.detector.folder_verdict(accepted),
      "folder_test": scored["folder_test"],
      "adaptation": {k: v for k, v in (scored.get("adapted") or {}).items()
                     if k in ("method", "reason", "prior")},
      "operating_point": scored["point"], "threshold": scored["threshold"],
      "raw_threshold": scored["raw_threshold"], "temperature": scored["temperature"],
      "calibration_reused": fitted.reused, "n_overlays": len(overlays),
      "gradcam_note": gradcam_note, "seconds": time.time() - start,
  }


def score_images(predictor, fitted: fit.Fitted, images: np.ndarray,
                 target_sensitivity: float | None = None, adapt: str = "none") -> dict:
  """Calibrated probabilities, labels at the operating point and OOD scores of images."""
  cal = fitted.calibration
  temperature = cal["temperature"]
  point, raw_threshold = operating_point(cal, predictor.config, target_sensitivity)
  if len(images):
    out = predictor.predict(images)
    raw = np.asarray(out.probs, np.float64)
    ood_scores, signals = ood_signals.score_and_signal(fitted.detector, out.features, images)
    folder = folder_judgement(fitted, out.features, raw,
                              fitted.detector.in_distribution(ood_scores), predictor.workdir)
  else:
    raw, ood_scores, signals, folder = np.zeros(0), np.zeros(0), [], None
  scored = {"raw": raw, "probs": scoring.calibrate_probs(raw, temperature) if len(raw) else raw,
            # The model's own scale, as evaluate does.
            "labels": (raw >= raw_threshold).astype(int), "point": point,
            "raw_threshold": raw_threshold, "temperature": temperature,
            "threshold": float(scoring.calibrate_probs([raw_threshold], temperature)[0]),
            "ood_scores": ood_scores, "accepted": fitted.detector.in_distribution(ood_scores),
            "ood_signals": signals,
            "folder_test": folder}
  if adapt != "none" and len(images):
    scored["adapted"] = adapted_answers(predictor, images, adapt, temperature, folder)
  return scored


def adapted_answers(predictor, images: np.ndarray, requested: str, temperature: float,
                    folder: dict | None) -> dict:
  """{"method", "reason"} and, where it applies, "probs", "labels", "prior": the answers
  after label-free adaptation to these images. The adapted posteriors are calibrated and
  re-weighted, so the Bayes decision is at 0.5."""
  method, reason = adaptation.resolve(requested, len(images), (folder or {}).get("shifted"))
  if method == "none":
    return {"method": method, "reason": reason}
  adapted = adaptation.adapt(predictor, images, method, temperature)
  return {"method": method, "reason": reason, "probs": adapted["probs"],
          "labels": (adapted["probs"] >= 0.5).astype(int), "prior": adapted["prior"]}


def folder_judgement(fitted: fit.Fitted, features, raw_probs, accepted=None, workdir: str = "W"
                     ) -> dict | None:
  """The folder-level shift test and accuracy interval of scored images (2 or more)."""
  if fitted.shift is None or len(raw_probs) < 2:
    return None
  accepted = np.ones(len(raw_probs), bool) if accepted is None else accepted
  return site_estimate.add_to_folder_test(
      folder_shift.judge(fitted.shift, features, raw_probs),
      fitted.calibration.get("site_estimate"), fitted.shift, features, raw_probs, accepted,
      workdir)


def format_summary(s: dict) -> str:
  lines = [
      f"{s['model']} ({s['workdir']}): {s['n_files']} files, {s['n_scored']} scored, "
      f"{s['n_errors']} unreadable.",
      f"  {s['n_out_of_distribution']} of {s['n_scored']} flagged OUT_OF_DISTRIBUTION "
      f"(unlike the training images: score above {s['ood_threshold']:.4g}"
      f"{ood_signals.describe_counts(s.get('ood_flagged_by'))}; "
      "no diagnosis is given for them).",
      f"  {s['n_pneumonia']} PNEUMONIA, {s['n_normal']} NORMAL at the {s['operating_point']} "
      f"operating point (calibrated threshold {s['threshold']:.4f}, model threshold "
      f"{s['raw_threshold']:.4f}; temperature {s['temperature']:.3f}, "
      f"{'cached in' if s['calibration_reused'] else 'fitted on validation, saved to'} "
      "calibration.json).",
  ]
  warning = ood.shift_warning(s["n_out_of_distribution"], s["n_scored"], s["folder_shift"])
  if warning:
    lines.insert(2, "  " + warning)
  if s.get("folder_test"):
    lines.insert(2, "  " + s["folder_test"]["summary"])
  if s.get("adaptation"):
    a = s["adaptation"]
    lines.append(f"  Label-free adaptation: {a['method']} ({a['reason']})"
                 + ("; adapted answers in the adapted_* columns, beside the model's own."
                    if a["method"] != "none" else "."))
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
