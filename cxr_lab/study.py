"""A sealed study: its plan is committed before any run, test/ is scored only after its choice.

A study is a folder (`studies/<name>/`) holding:

  plan.json      written and committed before the first run: the candidates (config specs),
                 the overrides every run gets, the seeds, the screen, the selecting
                 criterion, the rule and the operating point.
  results.json   what `run` measured: training and validation numbers only.
  choice.json    what `choose` made of results.json by the plan's rule (commit it).
  ablation.json  test/ scores of every run, written by `ablate` only once choice.json is
                 committed; reported, never used to choose.

`choose(plan, results)` is a pure function of the plan and the validation numbers: it reads
no test score, so the choice is the same whether or not test scores exist.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import numpy as np

PLAN_FILE = "plan.json"
RESULTS_FILE = "results.json"
CHOICE_FILE = "choice.json"
ABLATION_FILE = "ablation.json"
ENSEMBLE_SUFFIX = "+ensemble"
TTA_SUFFIX = "+tta"


class SealError(RuntimeError):
  """A step of a study asked for before the step that must precede it."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a study will do, fixed before its first run (plan.json)."""
  name: str
  root: str  # Where its workdirs go.
  candidates: dict  # {label: "configs/x.py:variants"}
  seeds: list  # Seeds of the confirmed candidates.
  screen_seeds: list  # Seeds every candidate gets first.
  advance: int  # Candidates with the best screen criterion that get every seed...
  keep: list  # ...and these, whatever their screen.
  overrides: list  # "dotted.key=value" applied to every candidate.
  criterion: str  # The validation metric that selects ("log_loss", lower is better).
  derived: list  # Per confirmed candidate: "ensemble" (of its seeds), "tta".
  budget_train_seconds: float  # What `make train` may spend training, on the study's machine.
  operating_point: str  # The decision threshold rule every score is reported at.
  notes: str = ""

  @classmethod
  def load(cls, study_dir: str) -> "Plan":
    path = os.path.join(study_dir, PLAN_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: a study is a folder with a {PLAN_FILE}.")
    with open(path) as f:
      values = json.load(f)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in values and f.default is dataclasses.MISSING)
    if unknown or missing:
      raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}.")
    plan = cls(**values)
    if plan.criterion != "log_loss":
      raise ValueError(f"{path}: criterion {plan.criterion!r}; only 'log_loss' is supported.")
    for label in plan.keep:
      if label not in plan.candidates:
        raise ValueError(f"{path}: keep names {label!r}, which is not a candidate.")
    return plan


def is_committed(path: str) -> bool:
  """Whether `path` is tracked by git and unchanged since the last commit."""
  folder, name = os.path.split(os.path.abspath(path))

  def git(*args):
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True)

  if git("ls-files", "--error-unmatch", name).returncode != 0:
    return False
  status = git("status", "--porcelain", "--", name)
  return status.returncode == 0 and not status.stdout.strip()


def require_committed(path: str, before: str) -> None:
  if not os.path.exists(path):
    raise SealError(f"{path} does not exist: {before}.")
  if not is_committed(path):
    raise SealError(f"{path} is not committed (or changed since): commit it {before}.")


# ---------------------------------------------------------------------------
# The rule.


def _stats(values) -> dict:
  arr = np.asarray(values, np.float64)
  return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
          "n": len(arr)}


def screen(plan: Plan, results: dict) -> list[str]:
  """The candidates that get every seed: the `advance` best on the screen seeds, and `keep`."""
  scored = {label: _stats([r[plan.criterion] for s, r in entry["runs"].items()
                           if int(s) in plan.screen_seeds])["mean"]
            for label, entry in results.items() if label in plan.candidates}
  ranked = sorted(scored, key=lambda label: (scored[label], label))
  advanced = ranked[:plan.advance]
  return advanced + [label for label in plan.keep if label not in advanced]


def candidate_stats(plan: Plan, results: dict) -> dict:
  """{label: mean, std, n, cost} of every candidate measured on every seed."""
  out = {}
  for label, entry in results.items():
    values = [r[plan.criterion] for r in entry["runs"].values()]
    if len(values) < len(plan.seeds) and not label.endswith(ENSEMBLE_SUFFIX):
      continue  # Screened out: one seed is not a mean.
    stats = _stats(values)
    stats["std"] = entry.get("spread", stats["std"])  # An ensemble: its members' spread.
    stats["cost"] = float(entry["cost_train_seconds"])
    out[label] = stats
  return out


def _pick(stats: dict) -> tuple[str, dict]:
  """Lowest mean; within one standard deviation of it, the cheapest (then by name)."""
  best = min(stats, key=lambda label: (stats[label]["mean"], label))
  band = stats[best]["mean"] + stats[best]["std"]
  eligible = sorted((label for label in stats if stats[label]["mean"] <= band),
                    key=lambda label: (stats[label]["cost"], stats[label]["mean"], label))
  return eligible[0], {"best": best, "band": band, "eligible": eligible}


def choose(plan: Plan, results: dict) -> dict:
  """The plan's rule over validation numbers only: the study's choice and `make train`'s."""
  stats = candidate_stats(plan, results)
  if not stats:
    raise SealError("No candidate has every seed measured yet: nothing to choose from.")
  chosen, why = _pick(stats)
  within = {k: v for k, v in stats.items() if v["cost"] <= plan.budget_train_seconds}
  default, default_why = _pick(within) if within else (None, {})
  return {"study": plan.name, "criterion": plan.criterion, "chosen": chosen,
          "chosen_rule": why, "make_train": default, "make_train_rule": default_why,
          "budget_train_seconds": plan.budget_train_seconds,
          "operating_point": plan.operating_point, "candidates": stats}


# ---------------------------------------------------------------------------
# Derived candidates and the ablation's numbers.


def ensemble_probs(predictions: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
  """(labels, mean probability) of several runs' `scoring.predictions` of the same images.

  The mean of the members' probabilities, as the ensemble kind computes it."""
  by_path = [{p["path"]: p for p in run} for run in predictions]
  paths = sorted(by_path[0])
  if not paths or any(sorted(m) != paths for m in by_path):
    raise ValueError("The runs did not predict the same images: no ensemble of them.")
  labels = np.array([by_path[0][p]["label"] for p in paths])
  probs = np.mean([[m[p]["prob"] for p in paths] for m in by_path], axis=0)
  return labels, probs


def spearman(x, y) -> float | None:
  """Spearman's rank correlation (scipy), None for fewer than 3 pairs."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  if len(x) < 3:
    return None
  return float(stats.spearmanr(x, y).statistic)
