"""The steps of a sealed study (`cxr_lab.study`): run, choose, ablate.

  run(study_dir, train_fn)   trains the screen, then every seed of the candidates it
                             advances; scores training-time validation only; results.json
  choose(study_dir)          the plan's rule over results.json; choice.json (commit it)
  ablate(study_dir)          refused until choice.json is committed; test/ of every run;
                             ablation.json and ABLATION.md
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess

import numpy as np

from cxr_lab import sweep
from cxr_jax import workdir as workdir_lib
from cxr_jax.metrics import calibration
from cxr_jax import evaluate
from cxr_jax.fits import fit
from cxr_jax.metrics import classification as metrics_lib
from cxr_jax import registry
from cxr_jax.metrics import scoring
from cxr_jax.tools import config_files
from cxr_lab import study

ABLATION_TABLE = "ABLATION.md"
# Test columns of the ablation, at the plan's operating point: (name, metric key).
TEST_COLUMNS = (("accuracy", "accuracy"), ("sensitivity", "recall"),
                ("specificity", "specificity"), ("ROC AUC", "roc_auc"))


def configs_of(plan: study.Plan, labels=None) -> dict:
  """{label: config} of the plan's candidates, each with the plan's overrides."""
  out = {}
  for label in labels or plan.candidates:
    config = config_files.load(plan.candidates[label])
    for assignment in plan.overrides:
      config_files.override(config, assignment)
    out[label] = config
  return out


def machine() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _plan_commit(study_dir: str) -> str:
  out = subprocess.run(["git", "log", "-1", "--format=%H %cI", "--", study.PLAN_FILE],
                       cwd=study_dir, capture_output=True, text=True)
  return out.stdout.strip()


def _run_record(run: dict) -> dict:
  """The numbers of a sweep's run.json that a study keeps: validation and cost only."""
  val, summary = run["validation"], run["summary"] or {}
  return {"log_loss": val["loss"], "roc_auc": val["at_0.5"]["roc_auc"],
          "accuracy": val["at_0.5"]["accuracy"], "specificity": val["at_0.5"]["specificity"],
          "ece": val["ece"], "train_seconds": summary.get("train_seconds"),
          "best_epoch": summary.get("best_epoch"), "epochs_run": summary.get("epochs_run"),
          "workdir": run["workdir"]}


def collect(plan: study.Plan) -> dict:
  """{label: {"runs": {seed: record}, "cost_train_seconds"}} of every finished run."""
  out = {}
  for label in plan.candidates:
    runs = {}
    for seed in plan.seeds:
      path = os.path.join(sweep.seed_workdir(plan.root, label, seed), sweep.RUN_FILE)
      if os.path.exists(path):
        runs[str(seed)] = _run_record(workdir_lib.read_json(path, None))
    if runs:
      out[label] = {"runs": runs, "cost_train_seconds": float(np.mean(
          [r["train_seconds"] or 0.0 for r in runs.values()]))}
  return out


def _tta_record(workdir: str, cache: dict) -> dict:
  predictor = registry.load_predictor(workdir, tta=True)
  data = sweep.load_split(cache, predictor.config.data, "validation")
  probs = predictor.probs(data.images)
  return {"log_loss": metrics_lib.log_loss(data.labels, probs),
          "accuracy": metrics_lib.binary_metrics(data.labels, probs, 0.5)["accuracy"]}


def derive(plan: study.Plan, results: dict, advanced: list[str], cache: dict) -> None:
  """Adds each advanced candidate's derived candidates ("+tta", "+ensemble") to results."""
  for label in advanced:
    entry = results.get(label)
    if entry is None or len(entry["runs"]) < len(plan.seeds):
      continue
    if "tta" in plan.derived:
      results[label + study.TTA_SUFFIX] = {
          "runs": {s: _tta_record(r["workdir"], cache) for s, r in entry["runs"].items()},
          "cost_train_seconds": entry["cost_train_seconds"]}
    if "ensemble" in plan.derived:
      predictions = [workdir_lib.read_json(os.path.join(r["workdir"], sweep.RUN_FILE), None)
                     ["validation"]["predictions"] for r in entry["runs"].values()]
      labels, probs = study.ensemble_probs(predictions)
      values = [r["log_loss"] for r in entry["runs"].values()]
      results[label + study.ENSEMBLE_SUFFIX] = {
          "runs": {"all": {"log_loss": metrics_lib.log_loss(labels, probs),
                           "accuracy": metrics_lib.binary_metrics(labels, probs, 0.5)
                           ["accuracy"]}},
          "spread": float(np.std(values, ddof=1)),
          "cost_train_seconds": entry["cost_train_seconds"] * len(plan.seeds)}


def _write_results(study_dir: str, plan: study.Plan, results: dict, advanced) -> None:
  workdir_lib.write_json(os.path.join(study_dir, study.RESULTS_FILE), {
      "study": plan.name, "plan_commit": _plan_commit(study_dir), "machine": machine(),
      "criterion": plan.criterion, "advanced": advanced, "candidates": results})


def run(study_dir: str, train_fn, after_run=None) -> dict:
  """Trains and scores the study (validation only), by its committed plan; results.json."""
  plan = study.Plan.load(study_dir)
  study.require_committed(os.path.join(study_dir, study.PLAN_FILE), "before the study's "
                          "first run")
  configs = configs_of(plan)

  def write_after(workdir, run_record):
    if after_run is not None:
      after_run(workdir, run_record)
    _write_results(study_dir, plan, collect(plan), None)

  sweep.run_sweep(configs, plan.screen_seeds, plan.root, train_fn, test=False,
                  seed_major=True, after_run=write_after)
  advanced = study.screen(plan, collect(plan))
  logging.info("Study %s: the screen advances %s.", plan.name, advanced)
  sweep.run_sweep({k: configs[k] for k in advanced}, plan.seeds, plan.root, train_fn,
                  test=False, seed_major=True, after_run=write_after)
  results = collect(plan)
  derive(plan, results, advanced, {})
  _write_results(study_dir, plan, results, advanced)
  return results


def choose(study_dir: str) -> dict:
  """choice.json from results.json by the plan's rule (reads no test score)."""
  plan = study.Plan.load(study_dir)
  path = os.path.join(study_dir, study.RESULTS_FILE)
  if not os.path.exists(path):
    raise study.SealError(f"{path} does not exist: run the study first.")
  results = workdir_lib.read_json(path, None)
  choice = study.choose(plan, results["candidates"])
  choice["results_machine"] = results.get("machine")
  workdir_lib.write_json(os.path.join(study_dir, study.CHOICE_FILE), choice)
  return choice


def _test_record(predictor, data, threshold: float, temperature: float) -> dict:
  probs = predictor.probs(data.images)
  m = metrics_lib.binary_metrics(data.labels, probs, threshold)
  record = {name: m[key] for name, key in TEST_COLUMNS}
  record.update(ece=calibration.expected_calibration_error(data.labels, probs),
                ece_calibrated=calibration.expected_calibration_error(
                    data.labels, scoring.calibrate_probs(probs, temperature)))
  return record, probs


def _adapted_accuracy(predictor, data, threshold: float, temperature: float) -> float:
  adapted = evaluate.adapted_scores(predictor, data, "adabn+prior", temperature)
  return adapted["at_0.5"]["accuracy"] if threshold == 0.5 else None


def _score_runs(plan: study.Plan, label: str, entry: dict, cache: dict) -> dict:
  """{seed: test record} of one candidate (a "+tta" one with its views)."""
  base = label.removesuffix(study.TTA_SUFFIX)
  threshold = 0.5 if plan.operating_point == "0.5" else None
  out = {}
  for seed in entry["runs"]:
    workdir = sweep.seed_workdir(plan.root, base, int(seed))
    predictor = registry.load_predictor(workdir, tta=label != base)
    temperature = fit.load_or_fit(predictor).calibration["temperature"]
    data = sweep.load_split(cache, predictor.config.data, "test")
    record, probs = _test_record(predictor, data, threshold, temperature)
    if label == base:
      record["adapted_accuracy"] = _adapted_accuracy(predictor, data, threshold, temperature)
    record["predictions"] = scoring.predictions(data.paths, data.labels, probs)
    out[seed] = record
  return out


def _ensemble_test(plan: study.Plan, members: dict) -> dict:
  labels, probs = study.ensemble_probs([r["predictions"] for r in members.values()])
  m = metrics_lib.binary_metrics(labels, probs, 0.5)
  return {"all": {**{name: m[key] for name, key in TEST_COLUMNS},
                  "ece": calibration.expected_calibration_error(labels, probs)}}


def ablate(study_dir: str) -> dict:
  """test/ scores of every run, once choice.json is committed; ablation.json, ABLATION.md."""
  plan = study.Plan.load(study_dir)
  study.require_committed(os.path.join(study_dir, study.CHOICE_FILE),
                          "before test/ is scored (run `--step=choose`, then commit)")
  results = workdir_lib.read_json(os.path.join(study_dir, study.RESULTS_FILE), None)
  choice = workdir_lib.read_json(os.path.join(study_dir, study.CHOICE_FILE), None)
  cache, tests = {}, {}
  for label, entry in results["candidates"].items():
    if label.endswith(study.ENSEMBLE_SUFFIX):
      continue
    tests[label] = _score_runs(plan, label, entry, cache)
    logging.info("Ablation: %s scored on test/.", label)
  for label in results["candidates"]:
    if label.endswith(study.ENSEMBLE_SUFFIX):
      tests[label] = _ensemble_test(plan, tests[label.removesuffix(study.ENSEMBLE_SUFFIX)])
  ablation = {"study": plan.name, "machine": machine(), "chosen": choice["chosen"],
              "make_train": choice["make_train"], "operating_point": plan.operating_point,
              "candidates": {label: {s: {k: v for k, v in r.items() if k != "predictions"}
                                     for s, r in runs.items()}
                             for label, runs in tests.items()},
              "spearman": criterion_spearman(plan, results["candidates"], tests)}
  workdir_lib.write_json(os.path.join(study_dir, study.ABLATION_FILE), ablation)
  with open(os.path.join(study_dir, ABLATION_TABLE), "w") as f:
    f.write(format_ablation(plan, results["candidates"], ablation) + "\n")
  return ablation


def criterion_spearman(plan: study.Plan, candidates: dict, tests: dict) -> dict:
  """Spearman of -criterion with test accuracy: over every candidate's first screen seed,
  and over every single-network run (+1: the criterion's best is test's best)."""
  seed = str(plan.screen_seeds[0])
  first = [(c["runs"][seed][plan.criterion], tests[label][seed]["accuracy"])
           for label, c in candidates.items() if label in plan.candidates and seed in c["runs"]]
  every = [(c["runs"][s][plan.criterion], tests[label][s]["accuracy"])
           for label, c in candidates.items() if label in plan.candidates for s in c["runs"]]
  out = {}
  for name, pairs in (("screen_seed", first), ("every_run", every)):
    x, y = zip(*pairs) if pairs else ((), ())
    out[name] = {"n": len(pairs), "spearman": study.spearman([-v for v in x], y)}
  return out


def _cell(values, digits: int = 3) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "–"
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def format_ablation(plan: study.Plan, candidates: dict, ablation: dict) -> str:
  """Markdown: the criterion beside test, mean ± sample std over seeds."""
  keys = [name for name, _ in TEST_COLUMNS] + ["ece", "ece_calibrated", "adapted_accuracy"]
  header = (["candidate", "seeds", f"validation {plan.criterion} (selects)"]
            + [f"test {k.replace('_', ' ')} @{plan.operating_point}" for k in keys])
  lines = [f"Study `{plan.name}`: chosen `{ablation['chosen']}`, `make train`: "
           f"`{ablation['make_train']}`. Test is reported, never used to choose "
           f"({ablation['machine']}).", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for label, entry in candidates.items():
    runs = ablation["candidates"][label]
    cells = [f"`{label}`", str(len(entry["runs"])),
             _cell([r[plan.criterion] for r in entry["runs"].values()])]
    cells += [_cell([r.get(k) for r in runs.values()]) for k in keys]
    lines.append("| " + " | ".join(cells) + " |")
  rho = ablation["spearman"]
  lines += ["", "Spearman of the criterion (negated) with test accuracy: "
            + "; ".join(f"{k.replace('_', ' ')} {v['spearman'] if v['spearman'] is None else round(v['spearman'], 2)} (n = {v['n']})"
                        for k, v in rho.items()) + "."]
  return "\n".join(lines)
