"""Collecting the report's numbers: each model's validation fits, test and external scores.

Everything that is chosen (the best model, both decision thresholds, the temperature)
is fitted on validation; test and the external folders are only scored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from cxr_jax import data as data_lib
from cxr_jax.runtime import progress
from cxr_jax import workdir as workdir_lib
from cxr_jax.data import decode
from cxr_jax.data import dicom
from cxr_jax.data import splits
from cxr_jax.fits import cues
from cxr_jax import evaluate
from cxr_jax.fits import fit
from cxr_jax import registry
from cxr_jax.metrics import scoring


@dataclasses.dataclass(frozen=True)
class Entry:
  """One model of the report: its workdir, and the config that trains it if missing."""
  name: str
  workdir: str
  description: str = ""
  config: object = None  # ml_collections config; None: the report never trains it.


def entries_from_configs(configs, workdirs: str, seed: int | None = None) -> list[Entry]:
  """One Entry per training config, its workdir `<workdirs>/<config.name>`.

  seed: a sweep's layout instead, `<workdirs>/<config.name>/seed_<seed>`.

  A config whose pretrained weights file is missing is left out unless its workdir
  exists (an optional model this machine cannot train).
  """
  out = []
  for config in configs:
    workdir = os.path.join(workdirs, config.name)
    if seed is not None:
      workdir = os.path.join(workdir, f"seed_{seed}")
    weights = config.model.weights if "weights" in config.model else ""  # A kind's own key.
    if weights.endswith(".h5") and not os.path.exists(weights) and not os.path.isdir(workdir):
      continue
    out.append(Entry(config.name, workdir, config.description, config))
  return out


def log_progress(message: str) -> None:
  print(f"[report {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_trained(entry: Entry, train_missing: bool = False,
                   train_fn: Callable | None = None) -> dict:
  """Status of one model's workdir; trains it first (train_fn(config, workdir)) when asked."""
  trained, reason = workdir_lib.status(entry.workdir)
  status = {"name": entry.name, "workdir": entry.workdir, "description": entry.description}
  if trained:
    return dict(status, status="reused", reason="trained workdir reused")
  if not train_missing:
    return dict(status, status="skipped", reason=f"{reason}; not trained (use --train_missing)")
  if entry.config is None or train_fn is None:
    return dict(status, status="skipped", reason=f"{reason}; no config to train it with")
  log_progress(f"{entry.name}: training into {entry.workdir} ({reason})")
  start = time.time()
  train_fn(entry.config, entry.workdir)
  return dict(status, status="trained",
              reason=f"trained by the report in {time.time() - start:.0f}s")


def limit_per_class(data: data_lib.DecodedSet, max_per_class: int) -> data_lib.DecodedSet:
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

  def split(self, data_config, split: str) -> data_lib.DecodedSet:
    key = (split, json.dumps(data_config.to_dict(), sort_keys=True, default=str))
    if key not in self._cache:
      self._cache[key] = limit_per_class(data_lib.load(data_config, split), self.max_per_class)
    return self._cache[key]

  def folder(self, folder: str, data_config) -> data_lib.DecodedSet:
    prep = data_lib.Preprocess.from_config(data_config)
    key = ("folder", os.path.abspath(folder), prep)
    if key not in self._cache:
      self._cache[key] = data_lib.load_folder(folder, prep, self.max_per_class)
    return self._cache[key]


def _evaluate(predictor, data, description, fitted, n_boot, adapt: str = "none") -> dict:
  result = evaluate.evaluate_set(predictor, data, description, fitted, n_boot, adapt)
  for key in ("workdir", "model", "data_dir"):
    result.pop(key)
  return result


def collect_model(predictor, name: str, description: str = "",
                  target_sensitivity: float = fit.DEFAULT_TARGET_SENSITIVITY,
                  externals: dict[str, str] | None = None, cache: DataCache | None = None,
                  n_boot: int = 1000, adapt: str = "none") -> dict:
  """All numbers of one trained model: validation fits, train/validation/test/external scores.

  adapt: label-free adaptation (inference.adaptation.CHOICES) of test and every external
  folder, reported beside the model's own numbers."""
  cache = cache or DataCache()
  config = predictor.config
  log_progress(f"{name}: validation predictions and what is fitted on them")
  val = cache.split(config.data, "validation")
  fitted = fit.load_or_fit(predictor, target_sensitivity, validation=val)
  cal = fitted.calibration
  default_name, default_threshold = fit.operating_point(cal, config)
  sensitivity_key = f"sensitivity_{fit.target_key(target_sensitivity)}"
  validation = _evaluate(predictor, val, "validation", fitted, 0)
  log_progress(f"{name}: training-split OOD scores and test predictions")
  train = cache.split(config.data, "train")
  train_scores = fitted.detector.score(predictor.predict(train.images).features, train.images)
  test = _evaluate(predictor, cache.split(config.data, "test"), "test", fitted, n_boot, adapt)
  external_scores = {}
  for ext_name, folder in (externals or {}).items():
    log_progress(f"{name}: external folder {ext_name} ({folder})")
    try:
      ext = cache.folder(folder, config.data)
    except (FileNotFoundError, ValueError) as e:
      external_scores[ext_name] = {"folder": folder, "error": str(e)}
      continue
    external_scores[ext_name] = dict(_evaluate(predictor, ext, folder, fitted, n_boot, adapt),
                                     folder=folder)
  summary = workdir_lib.read_json(workdir_lib.path(predictor.workdir,
                                                   workdir_lib.SUMMARY_FILE), {})
  return {
      "name": name, "description": description, "workdir": predictor.workdir,
      "model": predictor.model_name, "supports_gradcam": predictor.supports_gradcam,
      "image_size": predictor.image_size, "channels": predictor.channels,
      "data_dir": config.data.data_dir,
      "params": summary.get("params"), "train_seconds": summary.get("train_seconds"),
      "epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
      "history": workdir_lib.read_json(workdir_lib.path(predictor.workdir,
                                                        workdir_lib.HISTORY_FILE), []),
      "thresholds": {scoring.VALIDATION_THRESHOLD: predictor.threshold,
                     "sensitivity": cal["sensitivity_thresholds"][
                         fit.target_key(target_sensitivity)],
                     **(cal.get("operating_points") or {})},
      "default_point": evaluate.point_key(default_name), "default_name": default_name,
      "default_threshold": default_threshold, "sensitivity_point": f"at_{sensitivity_key}",
      "target_sensitivity": target_sensitivity, "temperature": cal["temperature"],
      "calibration": cal, "val_loss": validation["at_0.5"]["log_loss"],
      "train_ood_scores": [round(float(v), 5) for v in train_scores],
      "validation": validation, "test": test, "externals": external_scores,
  }


def select_best(results: Sequence[dict]) -> str | None:
  """Name of the model with the lowest validation log loss (README: validation F1 is nearly
  1 for every model and cannot rank them)."""
  if not results:
    return None
  return min(results, key=lambda r: r["val_loss"])["name"]


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


def gradcam_cases(result: dict, predictor, cache: DataCache, n_per_kind: int = 2
                  ) -> list[dict]:
  """Grad-CAM panels ({"image", "heatmap", "title"}) of the most confident test cases."""
  if not predictor.supports_gradcam:
    return []
  test = cache.split(predictor.config.data, "test")
  paths, labels, probs = scoring.prediction_arrays(result["test"]["predictions"])
  if list(test.paths) != paths:
    raise ValueError("Test images changed since the predictions were made.")
  threshold = result["default_threshold"]
  cases = pick_cases(labels, probs, threshold, n_per_kind)
  if not cases:
    return []
  cams = predictor.gradcam(test.images[[i for i, _ in cases]])
  items = []
  for (i, kind), cam in zip(cases, cams):
    display = decode.display_image(decode.open_file(test.paths[i]), max_side=256)
    items.append({"image": display, "heatmap": cam,
                  "title": f"{kind} p={probs[i]:.3f}\n{os.path.basename(test.paths[i])[:28]}"})
  return items


def image_sizes(folder: str) -> tuple[list[tuple[int, int]], list[dict]]:
  """(width, height) of every image under `folder` from its header; unreadable ones listed."""
  sizes, bad = [], []
  for file_path in data_lib.expand_paths([folder]):
    try:
      if dicom.is_dicom(decode.read_bytes(file_path), file_path):
        sizes.append(decode.open_file(file_path).size)
        continue
      with Image.open(file_path) as img:  # Reads the header only.
        sizes.append(img.size)
    except (OSError, ValueError) as e:
      bad.append({"path": file_path, "reason": str(e)})
  return sizes, bad


def _size_summary(sizes_dir: str | None) -> tuple[dict, list]:
  if not sizes_dir or not os.path.isdir(sizes_dir):
    return {"folder": sizes_dir, "n": 0, "unreadable": [],
            "note": "folder not found" if sizes_dir else "not requested"}, []
  sizes, bad = image_sizes(sizes_dir)
  out = {"folder": sizes_dir, "n": len(sizes), "unreadable": bad}
  if sizes:
    w, h = np.array(sizes).T
    out.update(width_min=int(w.min()), width_median=float(np.median(w)), width_max=int(w.max()),
               height_min=int(h.min()), height_median=float(np.median(h)),
               height_max=int(h.max()), aspect_median=float(np.median(w / h)))
  return out, sizes


def _sample_images(train_ex, samples_per_class: int) -> dict[str, list[np.ndarray]]:
  rng = np.random.default_rng(0)
  grid = {}
  for label, class_name in enumerate(splits.CLASS_NAMES):
    paths = [e.path for e in train_ex if e.label == label]
    images = []
    for i in rng.permutation(len(paths)):
      if len(images) == samples_per_class:
        break
      try:
        images.append(decode.display_image(decode.open_file(paths[i]), max_side=256))
      except decode.ImageDecodeError:
        continue
    if images:
      grid[class_name] = images
  return grid


def collect_eda(data_config, sizes_dir: str | None, samples_per_class: int = 6) -> dict:
  """Class counts per split (train/val by the config's patient split), sizes, sample images.

  Returns the numbers and, under "arrays", what the figures are drawn from.
  """
  train_ex, val_ex = splits.train_val_examples(data_config.data_dir, data_config.val_fraction,
                                               data_config.split_seed,
                                               kind=splits.split_kind(data_config))
  test_ex = splits.list_class_folder(os.path.join(data_config.data_dir, "test"))
  sizes, raw_sizes = _size_summary(sizes_dir)
  by_split = {"train": train_ex, "validation": val_ex, "test": test_ex}
  return {
      "data_dir": data_config.data_dir,
      "counts": {k: splits.class_counts(v) for k, v in by_split.items()},
      "patients": {k: len({e.patient_id for e in v}) for k, v in by_split.items()},
      "val_fraction": data_config.val_fraction, "split_seed": data_config.split_seed,
      "split": splits.split_kind(data_config),
      "sizes": sizes,
      "arrays": {"sizes": raw_sizes, "samples": _sample_images(train_ex, samples_per_class)},
  }


def collect_cues(cache: DataCache, data_config) -> tuple[dict, dict]:
  """({split: cues.summarise}, {"cues", "labels"} of train for the figure): the acquisition
  cues of train and validation and how well each alone separates the classes."""
  out, arrays = {}, {}
  for split in ("train", "validation"):
    data = cache.split(data_config, split)
    measured = cues.measure(data.images, data.paths)
    out[split] = cues.summarise(measured, data.labels)
    if split == "train":
      arrays = {"cues": measured, "labels": data.labels}
  return out, arrays


def parse_externals(items: Sequence[str]) -> dict[str, str]:
  """{'name': 'path'} from ['name=path', ...] (a bare path is named by its folder)."""
  out = {}
  for item in items or []:
    name, sep, folder = item.partition("=")
    if not sep:
      name, folder = os.path.basename(os.path.normpath(item)), item
    if not name or not folder:
      raise ValueError(f"--external expects name=path, got {item!r}.")
    out[name] = folder
  return out


def collect_all(entries: Sequence[Entry], externals: dict[str, str], cache: DataCache,
                target_sensitivity: float, n_boot: int, train_missing: bool = False,
                train_fn: Callable | None = None, adapt: str = "none"
                ) -> tuple[list, list, dict]:
  """(statuses, results, predictors by name) of every entry; one broken workdir is skipped."""
  statuses, results, predictors = [], [], {}
  for entry in progress.bar(entries, len(entries), "report", unit="model"):
    status = ensure_trained(entry, train_missing, train_fn)
    statuses.append(status)
    log_progress(f"{entry.name}: {status['reason']}")
    if status["status"] == "skipped":
      continue
    try:
      predictor = registry.load_predictor(entry.workdir)
      results.append(collect_model(predictor, entry.name, entry.description,
                                   target_sensitivity, externals, cache, n_boot, adapt))
      predictors[entry.name] = predictor
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("Could not evaluate %s", entry.workdir)
      status.update(status="skipped", reason=f"evaluation failed: {type(e).__name__}: {e}")
  return statuses, results, predictors
