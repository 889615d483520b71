"""The comparison report: every trained model on validation, test and external folders.

  report = build_report(entries, "reports/latest", externals={"hospital_b": "/data/b"})

`collect` gathers the numbers (through `evaluation.Predictor`: validation fits, test
and external scores, EDA), `figures` draws them, `sections` renders REPORT.md one
section at a time; `write_report` writes REPORT.md, report.json and figures/*.png.
The command is `python -m cxr_jax.tools.report` (`make report`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np

from cxr_jax import model_card
from cxr_jax import workdir as workdir_lib
from cxr_jax.metrics import scoring
from cxr_jax.report import collect
from cxr_jax.report import figures
from cxr_jax.report import sections

FIGURES = "figures"


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


def _model_figures(report: dict, figure_dir: str) -> dict[str, str]:
  results, best = report["results"], report.get("best")
  if not results:
    return {}
  test = {r["name"]: scoring.prediction_arrays(r["test"]["predictions"])[1:] for r in results}
  out = {
      "roc": figures.roc_curves(test, os.path.join(figure_dir, "roc_test.png"),
                                title="ROC curves on test (PNEUMONIA = positive)"),
      "pr": figures.pr_curves(test, os.path.join(figure_dir, "pr_test.png"),
                              title="Precision-recall curves on test"),
      "confusion": figures.confusion_matrices(
          {r["name"]: r["test"][sections.AT_VAL]["confusion_matrix"] for r in results},
          os.path.join(figure_dir, "confusion_test.png"),
          title="Test confusion matrices at the validation-F1 thresholds"),
  }
  best_result = next(r for r in results if r["name"] == best)
  labels, probs = test[best]
  temperature = best_result["temperature"]
  out["reliability"] = figures.reliability_diagram(
      {"before temperature scaling": (labels, probs),
       f"after (T = {temperature:.2f}, fitted on validation)":
           (labels, scoring.calibrate_probs(probs, temperature))},
      os.path.join(figure_dir, f"reliability_{best}.png"), title=f"Reliability on test, {best}")
  for r in results:
    out.update(_ood_figures(r, figure_dir))
  points = _estimate_points(results)
  if points:
    out["accuracy_estimates"] = figures.accuracy_estimates(
        points, os.path.join(figure_dir, "accuracy_estimates.png"),
        title="Label-free accuracy estimate against the truth, labelled folders")
  for r in results:
    if r["history"]:
      out[f"training_{r['name']}"] = figures.training_curves(
          r["history"], os.path.join(figure_dir, f"training_{r['name']}.png"),
          title=f"Training curves, {r['name']}")
  return out


def _estimate_points(results) -> dict[str, tuple[float, float]]:
  """{"model: set": (true accuracy, label-free estimate)} of every labelled folder scored."""
  points = {}
  for r in results:
    sets = {"test": r["test"], **{n: e for n, e in r["externals"].items() if "error" not in e}}
    for name, result in sets.items():
      est = (result.get("folder_test") or {}).get("estimated_accuracy") or {}
      if est.get("estimate") is not None and est.get("true") is not None:
        points[f"{r['name']}: {name}"] = (est["true"], est["estimate"])
  return points


def _ood_figures(r: dict, figure_dir: str) -> dict[str, str]:
  """Score distributions of every set, and risk-coverage on test, of one model."""
  def scores_of(result):
    return [row["ood_score"] for row in result["predictions"]]
  sets = {"train": r["train_ood_scores"], "validation": scores_of(r["validation"]),
          "test": scores_of(r["test"])}
  sets.update({name: scores_of(e) for name, e in r["externals"].items() if "error" not in e})
  curves = {f"test, by {k.replace('by_', '').replace('_', ' ')}": v
            for k, v in r["test"]["risk_coverage"].items() if k.startswith("by_")}
  return {
      f"ood_{r['name']}": figures.ood_distributions(
          sets, r["test"]["ood"]["threshold"], os.path.join(figure_dir, f"ood_{r['name']}.png"),
          title=f"Is this folder like the training data? {r['name']}"),
      f"risk_coverage_{r['name']}": figures.risk_coverage(
          curves, os.path.join(figure_dir, f"risk_coverage_{r['name']}.png"),
          title=f"Risk-coverage on test, {r['name']}"),
  }


def _eda_figures(eda: dict | None, arrays: dict, figure_dir: str) -> dict[str, str]:
  out = {}
  if arrays.get("cues"):
    out["cues"] = figures.cue_distributions(
        arrays["cues"]["cues"], arrays["cues"]["labels"], os.path.join(figure_dir, "cues.png"),
        title="Acquisition cues by class, train")
  if not eda:
    return out
  out = {**out, "class_counts": figures.class_counts_bar(
      eda["counts"], os.path.join(figure_dir, "class_counts.png"))}
  if arrays.get("sizes"):
    out["image_sizes"] = figures.image_size_histogram(
        arrays["sizes"], os.path.join(figure_dir, "image_sizes.png"),
        title=f"Original image sizes ({eda['sizes']['folder']})")
  if arrays.get("samples"):
    out["samples"] = figures.sample_grid(arrays["samples"],
                                         os.path.join(figure_dir, "samples.png"),
                                         title="Random training images per class")
  return out


def _gradcam_figures(report: dict, gradcam_items: dict, figure_dir: str) -> dict[str, str]:
  out = {}
  for r in report["results"]:
    items = gradcam_items.get(r["name"])
    if items:
      out[f"gradcam_{r['name']}"] = figures.gradcam_grid(
          items, os.path.join(figure_dir, f"gradcam_{r['name']}.png"), ncols=4,
          title=f"Grad-CAM, {r['name']} on test (top: correct, bottom: wrong; threshold "
                f"{r['thresholds'][scoring.VALIDATION_THRESHOLD]:.3f})")
  return out


def write_report(report: dict, output_dir: str, eda_arrays: dict | None = None,
                 gradcam_items: dict | None = None) -> str:
  """Writes the figures, REPORT.md and report.json; returns REPORT.md's path.

  report: {"results": [collect_model dicts], "statuses": [...], "best", "eda",
  "externals": {name: path}, "target_sensitivity", optional "command", "wall_seconds",
  "max_per_class", "gradcam_notes"}. Not modified.
  """
  figure_dir = os.path.join(output_dir, FIGURES)
  os.makedirs(output_dir, exist_ok=True)
  paths = {**_eda_figures(report.get("eda"), eda_arrays or {}, figure_dir),
           **_model_figures(report, figure_dir),
           **_gradcam_figures(report, gradcam_items or {}, figure_dir)}
  figs = {k: os.path.relpath(v, output_dir) for k, v in paths.items() if v}
  path = os.path.join(output_dir, "REPORT.md")
  with open(path, "w") as f:
    f.write(sections.render(report, figs))
  with open(os.path.join(output_dir, "report.json"), "w") as f:
    json.dump(_jsonable({**report, "figures": figs}), f, indent=1)
  return path


def _gradcams(report: dict, predictors: dict, cache, mode: str) -> tuple[dict, list[str]]:
  items, notes = {}, []
  best = report.get("best")
  if mode == "none":
    return items, notes
  todo = [r for r in report["results"] if mode == "all" or r["name"] == best]
  for r in sorted(todo, key=lambda r: r["name"] != best):
    if not r["supports_gradcam"]:
      continue
    collect.log_progress(f"{r['name']}: Grad-CAM")
    try:
      items[r["name"]] = collect.gradcam_cases(r, predictors[r["name"]], cache)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("Grad-CAM of %s failed", r["name"])
      notes.append(f"Grad-CAM of {r['name']} failed: {type(e).__name__}: {e}")
  if best and not next(r for r in report["results"] if r["name"] == best)["supports_gradcam"]:
    notes.append(f"The selected model {best} is not a convolutional network: Grad-CAM is not "
                 "available for it.")
  return items, notes


def _sweep_spread(entries) -> dict:
  """{model name: sweep aggregate} when the entries are seed_N workdirs of a sweep."""
  out = {}
  for entry in entries:
    parent = os.path.dirname(os.path.normpath(entry.workdir))
    if not os.path.basename(os.path.normpath(entry.workdir)).startswith("seed_"):
      continue
    sweep = workdir_lib.read_json(os.path.join(os.path.dirname(parent), "sweep.json"), {})
    if entry.name in sweep:
      out[entry.name] = sweep[entry.name]["aggregate"]
  return out


def _refresh_model_card(r: dict) -> None:
  """The model's test and external results into its workdir, then its MODEL_CARD.md."""
  try:
    for name, result in [("test", r["test"])] + [
        (n, e) for n, e in r["externals"].items() if "error" not in e]:
      workdir_lib.write_json(os.path.join(r["workdir"], f"eval_{name}.json"),
                             {**result, "workdir": r["workdir"], "model": r["model"],
                              "data_dir": result.get("folder", name)})
    model_card.write(r["workdir"])
  except OSError as e:  # A read-only workdir still gets its report.
    logging.warning("Could not refresh the model card of %s: %s", r["workdir"], e)


def _writes_into(entry: collect.Entry, train_missing: bool, max_per_class: int) -> bool:
  """Whether the report writes into the entry's workdir (trains it, or refreshes its card)."""
  if train_missing and entry.config is not None:
    return True
  try:
    return not max_per_class and workdir_lib.is_trained(entry.workdir)
  except (OSError, ValueError, KeyError):  # A broken workdir is skipped by collect.
    return False


def _writer_locks(stack: contextlib.ExitStack, entries, output_dir: str, train_missing: bool,
                  max_per_class: int, command: str | None) -> None:
  """The lock of the report folder and of every workdir it writes into, before any work."""
  stack.enter_context(workdir_lib.writer_lock(output_dir, command))
  for entry in entries:
    if not _writes_into(entry, train_missing, max_per_class):
      continue
    try:
      stack.enter_context(workdir_lib.writer_lock(entry.workdir, command))
    except PermissionError as e:  # A read-only workdir still gets its report, not its card.
      if train_missing and not workdir_lib.is_trained(entry.workdir):
        raise
      logging.warning("%s: its model card will not be refreshed.", e)


def build_report(entries: Sequence[collect.Entry], output_dir: str,
                 externals: dict[str, str] | None = None, train_missing: bool = False,
                 train_fn: Callable | None = None, target_sensitivity: float = 0.95,
                 sizes_dir: str | None = None, max_per_class: int = 0, n_boot: int = 1000,
                 gradcam: str = "all", data_config=None, command: str | None = None,
                 adapt: str = "none") -> dict:
  """Collects every available model, selects on validation and writes the report.

  gradcam: "all" (every convolutional model), "best" (the selected one) or "none".
  adapt: label-free adaptation of test and the external folders, reported beside.
  data_config: the data config of the EDA section when no model was collected.
  The output folder must not be an input (a workdir, a folder scored); it and every
  workdir written into are locked for the whole report.
  """
  externals = externals or {}
  inputs = [e.workdir for e in entries] + list(externals.values()) + [sizes_dir]
  workdir_lib.check_output(output_dir, inputs, folder=True)
  with contextlib.ExitStack() as stack:
    _writer_locks(stack, entries, output_dir, train_missing, max_per_class, command)
    return _build(entries, output_dir, externals, train_missing, train_fn, target_sensitivity,
                  sizes_dir, max_per_class, n_boot, gradcam, data_config, command, adapt)


def _build(entries, output_dir, externals, train_missing, train_fn, target_sensitivity,
           sizes_dir, max_per_class, n_boot, gradcam, data_config, command, adapt) -> dict:
  start = time.time()
  cache = collect.DataCache(max_per_class)
  statuses, results, predictors = collect.collect_all(
      entries, externals, cache, target_sensitivity, n_boot, train_missing, train_fn, adapt)
  best = collect.select_best(results)
  if best:
    collect.log_progress(f"best model by validation log loss: {best}")
  report = {"results": results, "statuses": statuses, "best": best, "externals": externals,
            "seeds": _sweep_spread(entries),
            "target_sensitivity": target_sensitivity, "max_per_class": max_per_class,
            "adapt": adapt,
            "n_boot": n_boot, "command": command,
            "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
  gradcam_items, report["gradcam_notes"] = _gradcams(report, predictors, cache, gradcam)
  if not max_per_class:  # Full sets only: a subset run must not overwrite a model's record.
    for r in results:
      _refresh_model_card(r)
  data_config = predictors[results[0]["name"]].config.data if results else data_config
  eda_arrays = {}
  report["eda"] = None
  if data_config is not None:
    collect.log_progress("EDA")
    try:
      eda = collect.collect_eda(data_config, sizes_dir)
      eda_arrays = eda.pop("arrays")
      report["eda"] = eda
    except (FileNotFoundError, ValueError) as e:
      logging.warning("EDA skipped: %s", e)
  report["cues"] = None
  if results:
    collect.log_progress("acquisition cues of train and validation")
    report["cues"], eda_arrays["cues"] = collect.collect_cues(cache, data_config)
  report["wall_seconds"] = time.time() - start
  path = write_report(report, output_dir, eda_arrays, gradcam_items)
  collect.log_progress(f"wrote {path} and report.json in {time.time() - start:.1f}s")
  return report
