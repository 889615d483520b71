"""The comparison report: every trained model on validation, test and external folders.

  python -m cxr_jax.report --workdirs=workdirs --output=reports/latest \
      [--external=name=path ...] [--train_missing] [--target_sensitivity=0.95]
  make report EXTERNAL="hospital_b=/data/hospital_b"

For each model of MODELS with a trained workdir `<workdirs>/<name>` (optionally
training the missing ones), the validation split is rebuilt from the workdir's
saved config and the test split is `<data_dir>/test`. Everything that is chosen —
the best model, both decision thresholds and the temperature — is fitted on
validation; test and the external folders are only scored. Writes REPORT.md,
report.json (every number, and the test predictions) and figures/*.png.

Importable pieces (the tests call them directly): `ensure_trained`,
`collect_model`, `select_best`, `gradcam_figure`, `collect_eda`, `write_report`,
and `build_report`, which runs them all.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import os
import sys
import time
from typing import Sequence

import numpy as np
from absl import app
from absl import flags
from PIL import Image

from cxr_jax import calibration
from cxr_jax import checkpoints
from cxr_jax import dicom_io
from cxr_jax import evaluate
from cxr_jax import input_pipeline
from cxr_jax import metrics as metrics_lib
from cxr_jax import models
from cxr_jax import plots
from cxr_jax import predict
from cxr_jax import splits

FIGURES = "figures"
CLASS_NAMES = splits.CLASS_NAMES
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
# The project's goal for the selected model on test, at its validation-F1 threshold.
GOALS = {"accuracy": 0.95, "f1": 0.96, "roc_auc": 0.99}
REFERENCES = [
    ("Kermany et al. 2018 (Cell), transfer learning, Inception V3", 0.928, 0.968),
    ("Google AutoML Vision", 0.946, 0.991),
]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str  # Also the workdir's name under --workdirs.
  config_module: str | None  # For --train_missing; None: never trained by the report.
  description: str
  # Listed only when its workdir exists or this file (its weights) is present.
  optional_on: str | None = None


MODELS = (
    ModelSpec("pca_logreg", "configs.pca_logreg", "PCA + logistic regression (64x64)"),
    ModelSpec("cnn_baseline", "configs.cnn_baseline", "baseline CNN, 2 conv + 2 dense (64x64)"),
    ModelSpec("cnn_v2", "configs.cnn_v2", "CNN, 4 conv blocks with BatchNorm (128x128)"),
    ModelSpec("cnn_v3", "configs.cnn_v3", "CNN, 5 double-conv blocks with BatchNorm (128x128)"),
    ModelSpec("mobilenet_v2", "configs.mobilenet",
              "MobileNetV2 alpha 0.35, ImageNet weights, fine-tuned (224x224)"),
    ModelSpec("mobilenet_v2_1.0", "configs.mobilenet_alpha1",
              "MobileNetV2 alpha 1.0, approximate ImageNet weights (int8 TFLite, BN folded), "
              "head on the frozen backbone (224x224)",
              optional_on="weights/mobilenet_v2_1.0_224_imagenet_bnfolded_dequant_from_int8_tflite.h5"),
)

_START = time.time()


def progress(message: str) -> None:
  print(f"[report {time.time() - _START:7.1f}s] {message}", flush=True)


# ---------------------------------------------------------------------------
# Workdirs: reuse or train.


def workdir_status(workdir: str) -> tuple[bool, str]:
  """(trained, reason): a finished training run leaves config, model and train_summary.json."""
  if not os.path.isdir(workdir):
    return False, "no workdir"
  if not os.path.exists(os.path.join(workdir, checkpoints.CONFIG_FILE)):
    return False, "no config.json"
  config = checkpoints.load_config(workdir)
  if config.model.name in models.SKLEARN_MODELS:
    from cxr_jax import sklearn_models  # pylint: disable=g-import-not-at-top
    has_model = os.path.exists(os.path.join(workdir, sklearn_models.MODEL_FILE))
  else:
    best = os.path.join(workdir, "checkpoints", "best")
    has_model = os.path.isdir(best) and any(
        e.isdigit() for e in os.listdir(best))
  if not has_model:
    return False, "no trained model in the workdir"
  if not os.path.exists(os.path.join(workdir, "train_summary.json")):
    return False, "training has not finished (no train_summary.json)"
  return True, "trained"


def ensure_trained(spec: ModelSpec, workdir: str, train_missing: bool = False,
                   config=None) -> dict:
  """Status of one model's workdir; trains it first when asked and possible.

  config: the training config (default: `spec.config_module`'s get_config()).
  """
  trained, reason = workdir_status(workdir)
  status = {"name": spec.name, "workdir": workdir, "description": spec.description}
  if trained:
    return dict(status, status="reused", reason="trained workdir reused")
  if not train_missing:
    return dict(status, status="skipped", reason=f"{reason}; not trained (use --train_missing)")
  if config is None and spec.config_module is None:
    return dict(status, status="skipped",
                reason=f"{reason}; the report does not train this one (see configs/mobilenet.py)")
  from cxr_jax import train  # pylint: disable=g-import-not-at-top
  if config is None:
    config = importlib.import_module(spec.config_module).get_config()
  progress(f"{spec.name}: training into {workdir} ({reason})")
  start = time.time()
  train.train_and_evaluate(config, workdir)
  return dict(status, status="trained",
              reason=f"trained by the report in {time.time() - start:.0f}s")


# ---------------------------------------------------------------------------
# Data, decoded once per (folder, size, channels).


def limit_per_class(data: input_pipeline.DecodedSet, max_per_class: int
                    ) -> input_pipeline.DecodedSet:
  """The first `max_per_class` images of each class (all when <= 0): quick runs."""
  if max_per_class <= 0:
    return data
  keep = np.concatenate([np.flatnonzero(data.labels == c)[:max_per_class] for c in (0, 1)])
  subset = data.subset(np.sort(keep))
  subset.skipped = data.skipped
  return subset


class DataCache:
  """Decoded validation/test/external sets shared by the models of equal input size."""

  def __init__(self, max_per_class: int = 0):
    self.max_per_class = max_per_class
    self._cache: dict = {}

  def validation(self, data_config) -> input_pipeline.DecodedSet:
    key = ("val", json.dumps(data_config.to_dict(), sort_keys=True, default=str))
    if key not in self._cache:
      _, val = input_pipeline.load_train_val(data_config)
      self._cache[key] = limit_per_class(val, self.max_per_class)
    return self._cache[key]

  def folder(self, folder: str, image_size: int, channels: int) -> input_pipeline.DecodedSet:
    key = ("folder", os.path.abspath(folder), int(image_size), int(channels))
    if key not in self._cache:
      self._cache[key] = input_pipeline.load_folder(folder, image_size, channels,
                                                    self.max_per_class)
    return self._cache[key]


# ---------------------------------------------------------------------------
# One model.


def score_set(labels, probs, thresholds: dict, temperature: float, n_boot: int = 1000,
              seed: int = 0) -> dict:
  """Metrics of a scored set at fixed thresholds and temperature (nothing fitted here)."""
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  calibrated = predict.calibrate_probs(probs, temperature)
  out = {
      "n": int(len(labels)),
      "counts": {n: int(np.sum(labels == i)) for i, n in enumerate(CLASS_NAMES)},
      "at_val_f1_threshold": metrics_lib.binary_metrics(labels, probs, thresholds["val_f1"]),
      "at_sensitivity_threshold": metrics_lib.binary_metrics(labels, probs,
                                                             thresholds["sensitivity"]),
      "ece": calibration.expected_calibration_error(labels, probs),
      "ece_calibrated": calibration.expected_calibration_error(labels, calibrated),
  }
  out["ci95"] = (calibration.bootstrap_ci(labels, probs, thresholds["val_f1"], n_boot, seed)
                 if n_boot > 0 else None)
  return out


def _predictions(data: input_pipeline.DecodedSet, probs) -> dict:
  return {"paths": list(data.paths), "labels": [int(v) for v in data.labels],
          "probs": [round(float(p), 7) for p in probs]}


def _read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def collect_model(workdir: str, name: str | None = None, description: str = "",
                  target_sensitivity: float = predict.DEFAULT_TARGET_SENSITIVITY,
                  externals: dict[str, str] | None = None, cache: DataCache | None = None,
                  n_boot: int = 1000) -> dict:
  """All numbers of one trained workdir: validation fits, test and external scores."""
  cache = cache or DataCache()
  predictor = evaluate.load_predictor(workdir)
  config = predictor.config
  name = name or os.path.basename(os.path.normpath(workdir))
  data_config = config.data
  progress(f"{name}: validation predictions")
  val = cache.validation(data_config)
  val_probs = predictor.predict(val)
  cal = predict.fit_calibration(val.labels, val_probs, predictor.threshold,
                                (target_sensitivity,))
  sensitivity_threshold = cal["sensitivity_thresholds"][predict.target_key(target_sensitivity)]
  thresholds = {"val_f1": predictor.threshold, "sensitivity": sensitivity_threshold}
  temperature = cal["temperature"]
  val_scores = score_set(val.labels, val_probs, thresholds, temperature, n_boot=0)

  test_dir = os.path.join(data_config.data_dir, "test")
  progress(f"{name}: test predictions ({test_dir})")
  test = cache.folder(test_dir, data_config.image_size, data_config.channels)
  test_probs = predictor.predict(test)
  test_scores = score_set(test.labels, test_probs, thresholds, temperature, n_boot)
  test_scores["skipped_files"] = test.skipped

  external_scores = {}
  for ext_name, folder in (externals or {}).items():
    progress(f"{name}: external folder {ext_name} ({folder})")
    try:
      ext = cache.folder(folder, data_config.image_size, data_config.channels)
    except (FileNotFoundError, ValueError) as e:
      external_scores[ext_name] = {"folder": folder, "error": str(e)}
      continue
    ext_probs = predictor.predict(ext)
    scores = score_set(ext.labels, ext_probs, thresholds, temperature, n_boot)
    scores.update(folder=folder, skipped_files=ext.skipped, n_skipped=len(ext.skipped),
                  predictions=_predictions(ext, ext_probs))
    external_scores[ext_name] = scores

  summary = _read_json(os.path.join(workdir, "train_summary.json"), {})
  return {
      "name": name, "description": description, "workdir": workdir,
      "model": config.model.name, "is_flax": config.model.name not in models.SKLEARN_MODELS,
      "image_size": int(data_config.image_size), "channels": int(data_config.channels),
      "data_dir": data_config.data_dir,
      "params": summary.get("params"), "train_seconds": summary.get("train_seconds"),
      "epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
      "history": _read_json(os.path.join(workdir, "history.json"), []),
      "thresholds": thresholds, "target_sensitivity": target_sensitivity,
      "temperature": temperature, "calibration": cal,
      "validation": val_scores, "test": test_scores, "externals": external_scores,
      "val_predictions": _predictions(val, val_probs),
      "test_predictions": _predictions(test, test_probs),
  }


def select_best(results: Sequence[dict]) -> str | None:
  """Name of the model with the highest validation F1 (at its own threshold); AUC breaks ties."""
  if not results:
    return None
  def key(r):
    m = r["validation"]["at_val_f1_threshold"]
    return (m["f1"], m["roc_auc"] if m["roc_auc"] is not None else -1.0)
  return max(results, key=key)["name"]


# ---------------------------------------------------------------------------
# Grad-CAM of test cases.


def pick_cases(labels, probs, threshold: float, n_per_kind: int = 2) -> list[tuple[int, str]]:
  """(index, kind) of the most confident TP, TN, then FP, FN; gaps filled from the same row."""
  labels = np.asarray(labels)
  probs = np.asarray(probs)
  preds = probs >= threshold
  kinds = {"TP": (labels == 1) & preds, "TN": (labels == 0) & ~preds,
           "FP": (labels == 0) & preds, "FN": (labels == 1) & ~preds}
  # Most confident first: a confident error is the most instructive one.
  ranked = {k: sorted(np.flatnonzero(m), key=lambda i: -abs(probs[i] - threshold))
            for k, m in kinds.items()}
  out = []
  for row in (("TP", "TN"), ("FP", "FN")):
    chosen = [(int(i), k) for k in row for i in ranked[k][:n_per_kind]]
    spare = [(int(i), k) for k in row for i in ranked[k][n_per_kind:]]
    out.extend(chosen + spare[:2 * n_per_kind - len(chosen)])
  return out


def gradcam_figure(result: dict, path: str, cache: DataCache | None = None,
                   n_per_kind: int = 2) -> str | None:
  """Grad-CAM grid of correct (TP/TN) and wrong (FP/FN) test cases of a Flax model."""
  if not result["is_flax"]:
    return None
  cache = cache or DataCache()
  config = checkpoints.load_config(result["workdir"])
  test = cache.folder(os.path.join(config.data.data_dir, "test"), config.data.image_size,
                      config.data.channels)
  preds = result["test_predictions"]
  if list(test.paths) != preds["paths"]:
    raise ValueError("Test images changed since the predictions were made.")
  cases = pick_cases(preds["labels"], preds["probs"], result["thresholds"]["val_f1"], n_per_kind)
  if not cases:
    return None
  idx = [i for i, _ in cases]
  model, variables = predict.load_flax_model(result["workdir"], config)
  cams = predict.gradcam_heatmaps(model, variables, test.images[idx])
  items = []
  for (i, kind), cam in zip(cases, cams):
    display = predict.display_image(predict.open_any(test.paths[i]), max_side=256)
    items.append({"image": display, "heatmap": cam,
                  "title": f"{kind} p={preds['probs'][i]:.3f}\n"
                           f"{os.path.basename(test.paths[i])[:28]}"})
  return plots.gradcam_grid(
      items, path, ncols=2 * n_per_kind,
      title=f"Grad-CAM, {result['name']} on test (top: correct, bottom: wrong; "
            f"threshold {result['thresholds']['val_f1']:.3f})")


# ---------------------------------------------------------------------------
# Exploratory data analysis.


def image_sizes(folder: str) -> tuple[list[tuple[int, int]], list[dict]]:
  """(width, height) of every image under `folder` from its header; unreadable ones listed."""
  sizes, bad = [], []
  for path in predict.expand_paths([folder]):
    try:
      with open(path, "rb") as f:
        head = f.read(132)
      if dicom_io.is_dicom(head, path):
        h, w = dicom_io.read_dicom(path).shape[:2]
        sizes.append((w, h))
        continue
      with Image.open(path) as img:  # Reads the header only.
        sizes.append(img.size)
    except (OSError, ValueError) as e:
      bad.append({"path": path, "reason": str(e)})
  return sizes, bad


def collect_eda(data_config, sizes_dir: str | None, output_dir: str,
                samples_per_class: int = 6) -> dict:
  """Class counts per split (train/val by the config's patient split), sizes, sample grid."""
  figures = os.path.join(output_dir, FIGURES)
  out = {"data_dir": data_config.data_dir, "figures": {}}
  examples = input_pipeline.list_train_examples(data_config)
  train_ex, val_ex = splits.patient_grouped_split(examples, data_config.val_fraction,
                                                  data_config.split_seed)
  test_ex = splits.list_class_folder(os.path.join(data_config.data_dir, "test"))
  out["counts"] = {"train": splits.class_counts(train_ex),
                   "validation": splits.class_counts(val_ex),
                   "test": splits.class_counts(test_ex)}
  out["patients"] = {"train": len({e.patient_id for e in train_ex}),
                     "validation": len({e.patient_id for e in val_ex}),
                     "test": len({e.patient_id for e in test_ex})}
  out["val_fraction"], out["split_seed"] = data_config.val_fraction, data_config.split_seed
  out["figures"]["class_counts"] = plots.class_counts_bar(
      out["counts"], os.path.join(figures, "class_counts.png"))

  if sizes_dir and os.path.isdir(sizes_dir):
    sizes, bad = image_sizes(sizes_dir)
    out["sizes"] = {"folder": sizes_dir, "n": len(sizes), "unreadable": bad}
    if sizes:
      w, h = np.array(sizes).T
      out["sizes"].update(
          width_min=int(w.min()), width_median=float(np.median(w)), width_max=int(w.max()),
          height_min=int(h.min()), height_median=float(np.median(h)), height_max=int(h.max()),
          aspect_median=float(np.median(w / h)))
      out["figures"]["image_sizes"] = plots.image_size_histogram(
          sizes, os.path.join(figures, "image_sizes.png"),
          title=f"Original image sizes ({sizes_dir})")
  else:
    out["sizes"] = {"folder": sizes_dir, "n": 0, "unreadable": [],
                    "note": "folder not found" if sizes_dir else "not requested"}

  rng = np.random.default_rng(0)
  grid = {}
  for label, class_name in enumerate(CLASS_NAMES):
    paths = [e.path for e in train_ex if e.label == label]
    images = []
    for i in rng.permutation(len(paths)):
      if len(images) == samples_per_class:
        break
      try:
        images.append(predict.display_image(predict.open_any(paths[i]), max_side=256))
      except (OSError, ValueError):
        continue
    if images:
      grid[class_name] = images
  if grid:
    out["figures"]["samples"] = plots.sample_grid(
        grid, os.path.join(figures, "samples.png"), max_per_class=samples_per_class,
        title="Random training images per class")
  return out


# ---------------------------------------------------------------------------
# Writing.


def _f(v, digits: int = 3) -> str:
  return "–" if v is None else f"{v:.{digits}f}"


def _ci(m: dict, ci: dict | None, key: str) -> str:
  if ci is None or ci.get(key) is None:
    return _f(m.get(key))
  lo, hi = ci[key]
  return f"{_f(m.get(key))} [{lo:.3f}, {hi:.3f}]"


def _rel(path: str | None, output_dir: str) -> str | None:
  return None if path is None else os.path.relpath(path, output_dir)


def _img(path: str | None, output_dir: str, alt: str) -> str:
  return "" if path is None else f"![{alt}]({_rel(path, output_dir)})\n"


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  return obj


def _duration(seconds) -> str:
  if seconds is None:
    return "–"
  return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _metrics_row(name: str, scores: dict, best_mark: str = "") -> str:
  m, ci = scores["at_val_f1_threshold"], scores.get("ci95")
  return "| " + " | ".join([f"{name}{best_mark}", str(m["n"])]
                           + [_ci(m, ci, k) for k in METRICS]) + " |"


_METRICS_HEADER = ("| model | n | accuracy | precision | recall (sensitivity) | specificity | "
                   "F1 | ROC AUC |\n|---|---|---|---|---|---|---|---|")


def make_figures(results: Sequence[dict], best: str | None, output_dir: str) -> dict:
  """Cross-model figures (ROC, PR, confusion matrices, reliability) and training curves."""
  figures = os.path.join(output_dir, FIGURES)
  out = {}
  if not results:
    return out
  test = {r["name"]: (np.array(r["test_predictions"]["labels"]),
                      np.array(r["test_predictions"]["probs"])) for r in results}
  out["roc"] = plots.roc_curves(test, os.path.join(figures, "roc_test.png"),
                                title="ROC curves on test (PNEUMONIA = positive)")
  out["pr"] = plots.pr_curves(test, os.path.join(figures, "pr_test.png"),
                              title="Precision-recall curves on test")
  out["confusion"] = plots.confusion_matrices(
      {r["name"]: r["test"]["at_val_f1_threshold"]["confusion_matrix"] for r in results},
      os.path.join(figures, "confusion_test.png"),
      title="Test confusion matrices at the validation-F1 thresholds")
  best_result = next(r for r in results if r["name"] == best)
  labels, probs = test[best]
  out["reliability"] = plots.reliability_diagram(
      {"before temperature scaling": (labels, probs),
       f"after (T = {best_result['temperature']:.2f}, fitted on validation)":
           (labels, predict.calibrate_probs(probs, best_result["temperature"]))},
      os.path.join(figures, f"reliability_{best}.png"),
      title=f"Reliability on test, {best}")
  for r in results:
    if r["history"]:
      out[f"training_{r['name']}"] = plots.training_curves(
          r["history"], os.path.join(figures, f"training_{r['name']}.png"),
          title=f"Training curves, {r['name']}")
  return out


def write_report(report: dict, output_dir: str) -> str:
  """Writes REPORT.md and report.json (and the cross-model figures); returns REPORT.md's path.

  report: {"results": [collect_model dicts], "statuses": [ensure_trained dicts],
  "eda": collect_eda dict or None, "gradcam": {name: png path}, "externals": {name: path},
  "target_sensitivity": float, optional "best", "command", "wall_seconds", "max_per_class"}.
  """
  os.makedirs(output_dir, exist_ok=True)
  results = report["results"]
  best = report.get("best") or select_best(results)
  report["best"] = best
  figs = make_figures(results, best, output_dir)
  report["figures"] = {k: _rel(v, output_dir) for k, v in figs.items()}
  target = report.get("target_sensitivity", predict.DEFAULT_TARGET_SENSITIVITY)
  by_name = {r["name"]: r for r in results}
  L = []  # The report's lines.
  L.append("# Pediatric chest X-rays, NORMAL vs PNEUMONIA: model comparison\n")
  L.append(f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
           + (f" by `{report['command']}`" if report.get("command") else "")
           + (f" in {_duration(report['wall_seconds'])}" if report.get("wall_seconds") else "")
           + ".\n")
  if report.get("max_per_class"):
    L.append(f"> **Subset run**: validation, test and external sets limited to "
             f"{report['max_per_class']} images per class. Not the full benchmark.\n")
  L.append("PNEUMONIA is the positive class. The best model, both decision thresholds and the "
           "temperature are chosen on the patient-grouped **validation** split carved out of "
           "`train/`; the test split and the external folders are only scored, nothing is "
           "fitted on them. Intervals are 95% percentile bootstrap intervals over test images.\n")

  # Goal.
  L.append("## Goal\n")
  if best is None:
    L.append("No trained model was available: nothing to compare.\n")
  else:
    r = by_name[best]
    m, ci = r["test"]["at_val_f1_threshold"], r["test"]["ci95"]
    met_all = all(m[k] is not None and m[k] >= g for k, g in GOALS.items())
    L.append(f"Best model by validation F1: **{best}** ({r['description']}). Goal for it on "
             f"test at its validation-F1 threshold ({r['thresholds']['val_f1']:.3f}): accuracy "
             f">= {GOALS['accuracy']}, F1 >= {GOALS['f1']}, ROC AUC >= {GOALS['roc_auc']} — "
             f"**{'met' if met_all else 'not met'}**.\n")
    L.append("| metric | goal | test value [95% CI] | |\n|---|---|---|---|")
    for k, g in GOALS.items():
      ok = m[k] is not None and m[k] >= g
      L.append(f"| {k} | >= {g} | {_ci(m, ci, k)} | {'met' if ok else '**not met**'} |")
    L.append("\nReference points (published results on this dataset):\n")
    L.append("| reference | accuracy | ROC AUC |\n|---|---|---|")
    for ref, acc, auc in REFERENCES:
      L.append(f"| {ref} | {acc:.3f} | {auc:.3f} |")
    L.append(f"| this report: {best} | {_f(m['accuracy'])} | {_f(m['roc_auc'])} |\n")

  # Data.
  eda = report.get("eda")
  if eda:
    L.append("## Data\n")
    L.append(f"`{eda['data_dir']}`; validation = {eda['val_fraction']:.0%} of `train/` per class, "
             f"grouped by patient (seed {eda['split_seed']}).\n")
    L.append("| split | NORMAL | PNEUMONIA | total | % PNEUMONIA | patients |\n"
             "|---|---|---|---|---|---|")
    for split, c in eda["counts"].items():
      total = sum(c.values())
      L.append(f"| {split} | {c['NORMAL']} | {c['PNEUMONIA']} | {total} | "
               f"{100 * c['PNEUMONIA'] / max(total, 1):.1f}% | {eda['patients'][split]} |")
    L.append("")
    L.append(_img(eda["figures"].get("class_counts"), output_dir, "images per class and split"))
    s = eda["sizes"]
    if s.get("n"):
      L.append(f"Original sizes of the {s['n']} images of `{s['folder']}`: width "
               f"{s['width_min']}–{s['width_max']} (median {s['width_median']:.0f}), height "
               f"{s['height_min']}–{s['height_max']} (median {s['height_median']:.0f}), median "
               f"aspect ratio {s['aspect_median']:.2f}; every model sees a square resize.\n")
      L.append(_img(eda["figures"].get("image_sizes"), output_dir, "image sizes"))
    else:
      L.append(f"Image sizes: {s.get('note', 'no images')} (`{s.get('folder')}`).\n")
    if s.get("unreadable"):
      L.append(f"{len(s['unreadable'])} unreadable file(s) there: "
               + ", ".join(f"`{b['path']}`" for b in s["unreadable"]) + "\n")
    L.append(_img(eda["figures"].get("samples"), output_dir, "sample images per class"))

  # Models.
  L.append("## Models\n")
  L.append("| model | description | workdir | status | parameters | training time | epochs "
           "(best) |\n|---|---|---|---|---|---|---|")
  for st in report.get("statuses", []):
    r = by_name.get(st["name"])
    params = f"{r['params']:,}" if r and r["params"] is not None else "–"
    epochs = (f"{r['epochs_run']} ({r['best_epoch']})" if r and r["epochs_run"] else "–")
    L.append(f"| {st['name']} | {st['description']} | `{st['workdir']}` | {st['status']}"
             f"{': ' + st['reason'] if st['status'] == 'trained' else ''} | {params} | "
             f"{_duration(r['train_seconds']) if r else '–'} | {epochs} |")
  skipped = [st for st in report.get("statuses", []) if st["status"] == "skipped"]
  if skipped:
    L.append("\nNot in this report: " + "; ".join(f"**{st['name']}** ({st['reason']})"
                                                  for st in skipped) + ".")
  L.append("")

  if results:
    # Comparison.
    L.append("## Comparison\n")
    L.append("Selection uses **validation F1 only** (at each model's validation-F1 threshold); "
             "★ marks the selected model. Test columns: value [95% bootstrap CI] at that "
             "threshold.\n")
    L.append("| model | val F1 | val AUC | test accuracy | test precision | test recall | "
             "test specificity | test F1 | test ROC AUC |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
      v = r["validation"]["at_val_f1_threshold"]
      m, ci = r["test"]["at_val_f1_threshold"], r["test"]["ci95"]
      L.append(f"| {r['name']}{' ★' if r['name'] == best else ''} | **{_f(v['f1'])}** | "
               f"{_f(v['roc_auc'])} | " + " | ".join(_ci(m, ci, k) for k in METRICS) + " |")
    n_val, n_test = results[0]["validation"]["n"], results[0]["test"]["n"]
    L.append(f"\nValidation: {n_val} images {results[0]['validation']['counts']}; test: "
             f"{n_test} images {results[0]['test']['counts']}.")
    for r in results:
      if r["test"].get("skipped_files"):
        L.append(f"{r['name']}: {len(r['test']['skipped_files'])} unreadable test file(s) "
                 "left out.")
    L.append("")
    L.append(_img(figs.get("roc"), output_dir, "ROC curves on test"))
    L.append(_img(figs.get("pr"), output_dir, "precision-recall curves on test"))
    L.append(_img(figs.get("confusion"), output_dir, "confusion matrices on test"))

    # Operating points.
    L.append("## Operating points\n")
    L.append(f"Two thresholds per model, both fitted on validation: the one that maximises "
             f"validation F1, and the highest one reaching {target:.0%} sensitivity on "
             f"validation (a screening setting). Test sensitivity may fall short of the "
             f"target: the threshold was not fitted on it.\n")
    L.append(f"| model | val-F1 threshold | test sensitivity | test specificity | "
             f"{target:.0%}-sensitivity threshold | val sensitivity | test sensitivity | "
             f"test specificity |\n|---|---|---|---|---|---|---|---|")
    for r in results:
      a, b = r["test"]["at_val_f1_threshold"], r["test"]["at_sensitivity_threshold"]
      vb = r["validation"]["at_sensitivity_threshold"]
      L.append(f"| {r['name']} | {r['thresholds']['val_f1']:.3f} | {_f(a['recall'])} | "
               f"{_f(a['specificity'])} | {r['thresholds']['sensitivity']:.3f} | "
               f"{_f(vb['recall'])} | {_f(b['recall'])} | {_f(b['specificity'])} |")
    L.append("")

    # Calibration.
    L.append("## Calibration\n")
    L.append("Expected calibration error (15 equal-width bins of the PNEUMONIA probability) "
             "before and after temperature scaling; T minimises the validation negative "
             "log-likelihood of sigmoid(logit / T). Temperature scaling is monotonic: "
             "thresholds, ROC and labels are unchanged.\n")
    L.append("| model | T | val ECE before | val ECE after | test ECE before | test ECE after |\n"
             "|---|---|---|---|---|---|")
    for r in results:
      v, t = r["validation"], r["test"]
      L.append(f"| {r['name']} | {r['temperature']:.3f} | {_f(v['ece'])} | "
               f"{_f(v['ece_calibrated'])} | {_f(t['ece'])} | {_f(t['ece_calibrated'])} |")
    L.append("")
    L.append(_img(figs.get("reliability"), output_dir, f"reliability diagram of {best}"))

    # Training curves.
    L.append("## Training curves\n")
    for r in results:
      if figs.get(f"training_{r['name']}"):
        L.append(f"**{r['name']}**: {r['epochs_run']} epochs, best epoch {r['best_epoch']}, "
                 f"{_duration(r['train_seconds'])}.\n")
        L.append(_img(figs[f"training_{r['name']}"], output_dir, f"training curves {r['name']}"))
      else:
        L.append(f"**{r['name']}**: no per-epoch history (fitted in one step, "
                 f"{_duration(r['train_seconds'])}).\n")

    # Grad-CAM.
    L.append("## Grad-CAM\n")
    cams = report.get("gradcam") or {}
    if cams:
      L.append("Grad-CAM of the PNEUMONIA logit at the last spatial feature map, on the most "
               "confident test cases of each kind (top row correct: TP, TN; bottom row wrong: "
               "FP, FN) at the validation-F1 threshold. p is the model's probability.\n")
      for name, path in cams.items():
        L.append(f"**{name}**{' (selected model)' if name == best else ''}\n")
        L.append(_img(path, output_dir, f"Grad-CAM {name}"))
    else:
      L.append("No Flax model in this report: Grad-CAM needs a convolutional network "
               "(not available for pca_logreg).\n")
    for note in report.get("gradcam_notes", []):
      L.append(f"- {note}")
    L.append("")

  # External folders.
  externals = report.get("externals") or {}
  if externals:
    L.append("## External folders\n")
    L.append("Scored with each model's validation-chosen thresholds and temperature; nothing "
             "refitted.\n")
    for ext_name, folder in externals.items():
      L.append(f"### {ext_name} (`{folder}`)\n")
      rows = [(r["name"], r["externals"].get(ext_name)) for r in results]
      errors = [(n, s) for n, s in rows if s is None or "error" in s]
      good = [(n, s) for n, s in rows if s is not None and "error" not in s]
      if errors and not good:
        L.append(f"Not scored: {errors[0][1]['error'] if errors[0][1] else 'no model'}\n")
        continue
      first = good[0][1]
      L.append(f"{first['n']} images {first['counts']}; **{first['n_skipped']} unreadable "
               f"file(s)**" + (":" if first["n_skipped"] else "."))
      for item in first["skipped_files"]:
        L.append(f"- `{item['path']}`: {item['reason']}")
      L.append("")
      L.append("At the validation-F1 threshold:\n")
      L.append(_METRICS_HEADER)
      for n, s in good:
        L.append(_metrics_row(n, s, " ★" if n == best else ""))
      L.append("\n| model | sensitivity @ val-F1 thr | specificity @ val-F1 thr | "
               f"sensitivity @ {target:.0%}-sens thr | specificity @ {target:.0%}-sens thr | "
               "ECE before | ECE after |\n|---|---|---|---|---|---|---|")
      for n, s in good:
        a, b = s["at_val_f1_threshold"], s["at_sensitivity_threshold"]
        L.append(f"| {n} | {_f(a['recall'])} | {_f(a['specificity'])} | {_f(b['recall'])} | "
                 f"{_f(b['specificity'])} | {_f(s['ece'])} | {_f(s['ece_calibrated'])} |")
      for n, s in errors:
        L.append(f"\n{n}: not scored ({s['error'] if s else 'missing'}).")
      L.append("")

  path = os.path.join(output_dir, "REPORT.md")
  with open(path, "w") as f:
    f.write("\n".join(L) + "\n")
  with open(os.path.join(output_dir, "report.json"), "w") as f:
    json.dump(_jsonable(report), f, indent=1)
  return path


# ---------------------------------------------------------------------------
# Everything.


def parse_externals(items: Sequence[str]) -> dict[str, str]:
  """{'name': 'path'} from ['name=path', ...] (a bare path is named by its folder)."""
  out = {}
  for item in items or []:
    name, sep, path = item.partition("=")
    if not sep:
      name, path = os.path.basename(os.path.normpath(item)), item
    if not name or not path:
      raise ValueError(f"--external expects name=path, got {item!r}.")
    out[name] = path
  return out


def build_report(workdirs: str, output_dir: str, externals: dict[str, str] | None = None,
                 train_missing: bool = False, target_sensitivity: float = 0.95,
                 sizes_dir: str | None = None, max_per_class: int = 0, n_boot: int = 1000,
                 gradcam: str = "all", names: Sequence[str] | None = None,
                 configs: dict | None = None, command: str | None = None) -> dict:
  """Collects every available model, selects on validation and writes the report.

  gradcam: "all" (every Flax model), "best" (the selected one if it is a Flax model)
  or "none". configs: {name: training config} for --train_missing (tests).
  """
  global _START
  start = _START = time.time()
  externals = externals or {}
  cache = DataCache(max_per_class)
  specs = [s for s in MODELS if names is None or s.name in names]
  statuses, results = [], []
  for spec in specs:
    workdir = os.path.join(workdirs, spec.name)
    if (spec.optional_on and not os.path.isdir(workdir)
        and not os.path.exists(spec.optional_on)):
      continue
    status = ensure_trained(spec, workdir, train_missing, (configs or {}).get(spec.name))
    statuses.append(status)
    if status["status"] == "skipped":
      progress(f"{spec.name}: skipped ({status['reason']})")
      continue
    progress(f"{spec.name}: {status['reason']}")
    try:
      results.append(collect_model(workdir, spec.name, spec.description, target_sensitivity,
                                   externals, cache, n_boot))
    except Exception as e:  # One broken workdir must not sink the whole report.
      logging.exception("Could not evaluate %s", workdir)
      status.update(status="skipped", reason=f"evaluation failed: {type(e).__name__}: {e}")
  best = select_best(results)
  if best:
    v = next(r for r in results if r["name"] == best)["validation"]["at_val_f1_threshold"]
    progress(f"best model by validation F1: {best} (F1 {v['f1']:.4f})")

  gradcams, notes = {}, []
  flax_results = [r for r in results if r["is_flax"]]
  if gradcam != "none":
    todo = flax_results if gradcam == "all" else [r for r in flax_results if r["name"] == best]
    for r in sorted(todo, key=lambda r: r["name"] != best):
      progress(f"{r['name']}: Grad-CAM")
      try:
        path = gradcam_figure(r, os.path.join(output_dir, FIGURES, f"gradcam_{r['name']}.png"),
                              cache)
        if path:
          gradcams[r["name"]] = path
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("Grad-CAM of %s failed", r["name"])
        notes.append(f"Grad-CAM of {r['name']} failed: {type(e).__name__}: {e}")
  if best and not next(r for r in results if r["name"] == best)["is_flax"]:
    notes.append(f"The selected model {best} is not a neural network: Grad-CAM is not "
                 "available for it.")

  data_config = (checkpoints.load_config(results[0]["workdir"]).data if results
                 else _default_data_config())
  progress("EDA")
  try:
    eda = collect_eda(data_config, sizes_dir, output_dir)
  except (FileNotFoundError, ValueError) as e:
    logging.warning("EDA skipped: %s", e)
    eda = None
  report = {"results": results, "statuses": statuses, "eda": eda, "best": best,
            "gradcam": gradcams, "gradcam_notes": notes, "externals": externals,
            "target_sensitivity": target_sensitivity, "max_per_class": max_per_class,
            "n_boot": n_boot, "command": command}
  progress("writing the report")
  report["wall_seconds"] = time.time() - start
  path = write_report(report, output_dir)
  progress(f"wrote {path} and report.json in {time.time() - start:.1f}s")
  return report


def _default_data_config():
  from configs import base  # pylint: disable=g-import-not-at-top
  return base.get_config().data


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; called only when run as a program, so importing defines none."""
  flags.DEFINE_string("workdirs", "workdirs", "Folder holding one workdir per model name.")
  flags.DEFINE_string("output", "reports/latest", "Where REPORT.md, report.json and figures go.")
  flags.DEFINE_multi_string("external", [], "name=path of a NORMAL/ + PNEUMONIA/ folder to "
                            "score with the validation-chosen settings; repeatable.")
  flags.DEFINE_bool("train_missing", False, "Train the models whose workdir has no finished run.")
  flags.DEFINE_float("target_sensitivity", 0.95, "Sensitivity the second operating point must "
                     "reach on validation.")
  flags.DEFINE_string("sizes_dir", "data/chest_xray_fullres_sample/train",
                      "Folder whose original image sizes the EDA shows.")
  flags.DEFINE_integer("max_per_class", 0, "> 0: limit validation, test and external sets to "
                       "this many images per class (quick checks; not the benchmark).")
  flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the confidence intervals.")
  flags.DEFINE_enum("gradcam", "all", ["all", "best", "none"], "Grad-CAM figures for every "
                    "Flax model, the selected one only, or none.")
  flags.DEFINE_list("models", None, "Only these model names (default: all of MODELS).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from cxr_jax import log_setup  # pylint: disable=g-import-not-at-top
  log_setup.setup()
  start = time.time()
  build_report(FLAGS.workdirs, FLAGS.output, parse_externals(FLAGS.external),
               FLAGS.train_missing, FLAGS.target_sensitivity, FLAGS.sizes_dir,
               FLAGS.max_per_class, FLAGS.n_boot, FLAGS.gradcam, FLAGS.models,
               command="python -m cxr_jax.report " + " ".join(sys.argv[1:]))
  print(f"Wall time: {time.time() - start:.1f}s")


if __name__ == "__main__":
  from cxr_jax import malloc_tuning  # pylint: disable=g-import-not-at-top
  malloc_tuning.reexec_with_tunables()
  define_flags()
  app.run(main)
