"""Seeds as a first-class axis: N seeds of each recipe in sibling workdirs, mean ± std.

  results = run_sweep({"mobilenet_v2": config}, seeds=(0, 1, 2), root="workdirs/sweeps/x")

Each (recipe, seed) trains into `<root>/<recipe>/seed_<s>` (resuming a stopped run,
reusing a finished one), is scored on validation and, unless told not to, on the
test split, and leaves `run.json`. `<root>/sweep.json` and `<root>/SWEEP.md` hold the
per-run numbers and, per recipe, mean ± standard deviation over seeds of every
metric. The data split (config.data.split_seed) stays fixed: seeds change the
initialisation of new layers, the batch order, augmentation and dropout.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from cxr_jax import config_checks
from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax.metrics import calibration
from cxr_jax import evaluate
from cxr_jax.fits import perturbations
from cxr_jax import registry
from cxr_jax.metrics import scoring
from cxr_lab import stress

RUN_FILE = "run.json"
SWEEP_FILE = "sweep.json"
TABLE_FILE = "SWEEP.md"
# (split, operating point, metric) columns of the table, in order.
COLUMNS = (("validation", "0.5", "loss"), ("validation", "0.5", "roc_auc"),
           ("validation", "0.5", "f1"),
           ("test", scoring.VALIDATION_THRESHOLD, "accuracy"),
           ("test", scoring.VALIDATION_THRESHOLD, "f1"),
           ("test", scoring.VALIDATION_THRESHOLD, "specificity"),
           ("test", scoring.VALIDATION_THRESHOLD, "recall"),
           ("test", "0.5", "accuracy"), ("test", "0.5", "f1"), ("test", "0.5", "roc_auc"),
           ("test", "0.5", "specificity"), ("test", "", "ece"),
           # Stress validation (cxr_lab/stress.py): validation under acquisition shifts.
           ("stress", "mean", "log_loss"), ("stress", "worst", "log_loss"),
           ("stress", "mean", "ece"))


def seed_workdir(root: str, recipe: str, seed: int) -> str:
  return os.path.join(root, recipe, f"seed_{seed}")


def with_seed(config, seed: int):
  config = copy.deepcopy(config)
  config.seed = int(seed)
  return config


def _flat_metrics(scores: dict) -> dict:
  return {k: v for k, v in scores.items() if k.startswith("at_")}


def _data_key(data_config) -> str:
  """What decides the decoded images of a split: every data setting but the source."""
  return json.dumps({k: v for k, v in data_config.to_dict().items() if k != "source"},
                    sort_keys=True)


def load_split(cache: dict, data_config, split: str):
  """data.load with the sweep's cache: each data config is decoded once."""
  key = (_data_key(data_config), split)
  if key not in cache:
    if split in ("train", "validation"):
      train, val = data_lib.load_train_val(data_config)
      cache[(key[0], "train")], cache[(key[0], "validation")] = train, val
    else:
      cache[key] = data_lib.load(data_config, split)
  return cache[key]


def score_run(workdir: str, test: bool, cache: dict) -> dict:
  """Validation (and test) metrics of a trained workdir at its operating points."""
  predictor = registry.load_predictor(workdir)
  out = {"workdir": workdir, "seed": int(predictor.config.seed),
         "summary": workdir_lib.read_json(workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE))}
  splits = ("validation", "test") if test else ("validation",)
  for split in splits:
    data = load_split(cache, predictor.config.data, split)
    result = evaluate.evaluate_set(predictor, data, split)
    # "loss": the validation log loss (metrics.log_loss), as sweeps have always named it.
    loss = {"loss": result["at_0.5"]["log_loss"]} if split == "validation" else {}
    _, labels, probs = scoring.prediction_arrays(result["predictions"])
    out[split] = {**_flat_metrics(result), "n": result["n"], **loss,
                  "ece": calibration.expected_calibration_error(labels, probs),
                  "predictions": result["predictions"]}
  out["stress"] = stress_run(predictor, cache)
  return out


def stress_run(predictor, cache: dict) -> dict:
  """Stress validation of a run: mean and worst family (severities from its training split)."""
  data_config = predictor.config.data
  key = (_data_key(data_config), "severities")
  if key not in cache:
    cache[key] = perturbations.Severities.fit(load_split(cache, data_config, "train").images)
  result = stress.stress_scores(predictor, load_split(cache, data_config, "validation"),
                                cache[key], 0.5)
  return {"mean": result["mean"], "worst": result["worst"]}


def metric_of(run: dict, split: str, point: str, metric: str) -> float | None:
  scores = run.get(split)
  if scores is None:
    return None
  if metric in ("loss", "ece"):  # Of the split, at no threshold.
    return scores.get(metric)
  if split == "stress":
    return scores.get(point, {}).get(metric)
  return scores.get(f"at_{point}", {}).get(metric)


def aggregate(runs: Sequence[dict]) -> dict:
  """{"split/point/metric": {"mean", "std", "min", "max", "n"}} over the runs of one recipe."""
  out = {}
  for split, point, metric in COLUMNS:
    values = [v for v in (metric_of(r, split, point, metric) for r in runs) if v is not None]
    if values:
      arr = np.asarray(values, np.float64)
      out[f"{split}/{point}/{metric}"] = {
          "mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
          "min": float(arr.min()), "max": float(arr.max()), "n": len(arr)}
  return out


def format_table(results: Mapping[str, dict]) -> str:
  """Markdown: one row per recipe, mean ± std over seeds of each column."""
  header = ["recipe", "seeds"] + [f"{s} {m}" + ("" if m in ("loss", "ece") else f" @{p}")
                                  for s, p, m in COLUMNS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for recipe, result in results.items():
    stats = result["aggregate"]
    cells = [recipe, str(len(result["runs"]))]
    for s, p, m in COLUMNS:
      st = stats.get(f"{s}/{p}/{m}")
      cells.append("–" if st is None else f"{st['mean']:.3f} ± {st['std']:.3f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _write(root: str, results: dict) -> None:
  slim = {name: {"aggregate": r["aggregate"],
                 "runs": [{k: v for k, v in run.items() if k not in ("validation", "test")}
                          | {split: {k: v for k, v in run[split].items() if k != "predictions"}
                             for split in ("validation", "test") if split in run}
                          for run in r["runs"]]}
          for name, r in results.items()}
  workdir_lib.write_json(os.path.join(root, SWEEP_FILE), slim)
  with open(os.path.join(root, TABLE_FILE), "w") as f:
    f.write("Mean ± standard deviation over seeds (sample std). Test columns are reported, "
            "never used to choose anything.\n\n" + format_table(results) + "\n")


def _one_run(recipe: str, seed: int, config, root: str, train_fn: Callable, test: bool,
             cache: dict, after_run: Callable[[str, dict], None] | None) -> dict:
  """Trains (unless finished) and scores one seed, its workdir's lock held throughout."""
  workdir = seed_workdir(root, recipe, seed)
  start = time.time()
  with workdir_lib.writer_lock(workdir):
    if not workdir_lib.is_trained(workdir):
      datasets = (load_split(cache, config.data, "train"),
                  load_split(cache, config.data, "validation"))
      train_fn(with_seed(config, seed), workdir, datasets=datasets)
    run = score_run(workdir, test, cache)
    run.update(recipe=recipe, seconds=time.time() - start)
    workdir_lib.write_json(os.path.join(workdir, RUN_FILE), run)
    if after_run is not None:
      after_run(workdir, run)
  return run


def run_sweep(configs: Mapping[str, object], seeds: Sequence[int], root: str,
              train_fn: Callable, test: bool = True, deadline: float | None = None,
              after_run: Callable[[str, dict], None] | None = None,
              seed_major: bool = False) -> dict:
  """Trains and scores every (recipe, seed); returns {recipe: {"runs", "aggregate"}}.

  deadline: a time.time() after which no new run starts (a finished sweep is resumable:
  the same call reuses the finished runs). after_run(workdir, run) is called after each.
  The root's lock is held throughout (sweep.json, SWEEP.md), and each run's while it runs.
  """
  for config in configs.values():  # Every recipe checked before the root is created.
    config_checks.check(config)
  with workdir_lib.writer_lock(root):
    return _run_all(configs, seeds, root, train_fn, test, deadline, after_run, seed_major)


def _run_all(configs, seeds, root, train_fn, test, deadline, after_run, seed_major) -> dict:
  results: dict = {}
  cache: dict = {}
  order = ([(r, s) for s in seeds for r in configs] if seed_major
           else [(r, s) for r in configs for s in seeds])
  for recipe, seed in order:
    if deadline is not None and time.time() > deadline:
      logging.warning("Sweep deadline reached: %s seed %d and later runs not started.",
                      recipe, seed)
      return results
    start = time.time()
    run = _one_run(recipe, seed, configs[recipe], root, train_fn, test, cache, after_run)
    entry = results.setdefault(recipe, {"runs": []})
    entry["runs"].append(run)
    entry["aggregate"] = aggregate(entry["runs"])
    _write(root, results)
    logging.info("Sweep: %s seed %d done in %.0fs.", recipe, seed, time.time() - start)
  return results
