"""How well each validation criterion tracks test: Spearman over sweeps' runs.

The blocked criterion of a recipe is the validation log loss of its `+blocked` twin (the
same recipe trained on the blocked patient split, configs/base.py), same seed; its test
numbers are the recipe's own.

Evidence, not a way to choose: the criterion that selects is written in
docs/results.md before its sweep runs; this only reports, after, how each candidate
criterion ranked the runs against their test numbers.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

# name -> (path into a sweep run, True when lower is better).
CRITERIA = {
    "validation log loss": (("summary", "val", "loss"), True),
    "validation ROC AUC": (("summary", "val", "roc_auc"), False),
    "stress mean log loss": (("stress", "mean", "log_loss"), True),
    "stress worst log loss": (("stress", "worst", "log_loss"), True),
    "stress mean ECE": (("stress", "mean", "ece"), True),
    "blocked validation log loss": (("blocked", "summary", "val", "loss"), True),
}
# name -> (path into a sweep run, True when lower is better).
TARGETS = {
    "test accuracy @0.5": (("test", "at_0.5", "accuracy"), False),
    "test accuracy @validation F1 threshold": (
        ("test", "at_validation_threshold", "accuracy"), False),
    "test specificity @0.5": (("test", "at_0.5", "specificity"), False),
    "test ROC AUC": (("test", "at_0.5", "roc_auc"), False),
    "test ECE": (("test", "ece"), True),
}
BLOCKED_SUFFIX = "blocked"


def _get(run: dict, path: tuple) -> float:
  node = run
  for key in path:
    if not isinstance(node, dict) or key not in node:
      return math.nan
    node = node[key]
  return float(node) if node is not None else math.nan


def merge(sweeps: list[dict]) -> dict:
  """{recipe: {"runs": [...]}} of several sweep.json files; a (recipe, seed) run found in
  more than one keeps the last file's."""
  runs: dict = {}
  for sweep in sweeps:
    for recipe, entry in sweep.items():
      for run in entry.get("runs", []):
        runs.setdefault(recipe, {})[run.get("seed")] = run
  return {recipe: {"runs": [by_seed[s] for s in sorted(by_seed)]}
          for recipe, by_seed in runs.items()}


def blocked_twin(recipe: str) -> str:
  """The name config variants give `recipe` trained on the blocked split."""
  base, _, variants = recipe.partition("-")
  return f"{base}-{variants}+{BLOCKED_SUFFIX}" if variants else f"{base}-{BLOCKED_SUFFIX}"


def _is_blocked(recipe: str) -> bool:
  return recipe.endswith(("-" + BLOCKED_SUFFIX, "+" + BLOCKED_SUFFIX))


def runs_table(sweep: dict) -> list[dict]:
  """One row per run of each recipe (blocked twins feed their recipe's blocked criterion)."""
  rows = []
  for recipe, entry in sweep.items():
    if _is_blocked(recipe):
      continue
    twins = {r.get("seed"): r for r in sweep.get(blocked_twin(recipe), {}).get("runs", [])}
    for run in entry.get("runs", []):
      run = dict(run, blocked=twins.get(run.get("seed"), {}))
      row = {"recipe": recipe, "seed": run.get("seed")}
      row.update({name: _get(run, path) for name, (path, _) in CRITERIA.items()})
      row.update({name: _get(run, path) for name, (path, _) in TARGETS.items()})
      rows.append(row)
  return rows


def _mean(values: list[float]) -> float:
  finite = [v for v in values if not math.isnan(v)]
  return float(np.mean(finite)) if finite else math.nan


def _spearman(x: list[float], y: list[float]) -> float:
  pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
  if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
    return math.nan
  return float(stats.spearmanr(*zip(*pairs)).statistic)


def correlations(rows: list[dict], by_recipe: bool = False) -> dict:
  """{criterion: {target: Spearman}}, signed so that +1 means the criterion's best is
  test's best; over runs, or over recipe means when by_recipe."""
  if by_recipe:
    recipes = sorted({r["recipe"] for r in rows})
    keys = list(CRITERIA) + list(TARGETS)
    rows = [{k: _mean([r[k] for r in rows if r["recipe"] == name]) for k in keys}
            for name in recipes]
  out = {}
  for name, (_, lower_better) in CRITERIA.items():
    out[name] = {}
    for target, (_, target_lower_better) in TARGETS.items():
      sign = -1.0 if lower_better != target_lower_better else 1.0
      out[name][target] = sign * _spearman([r[name] for r in rows], [r[target] for r in rows])
  return out


def markdown(rows: list[dict]) -> str:
  """The runs and both correlation tables, as markdown."""
  cols = list(CRITERIA) + list(TARGETS)
  lines = ["| recipe | seed | " + " | ".join(cols) + " |",
           "|---|---|" + "---|" * len(cols)]
  for r in rows:
    lines.append(f"| {r['recipe']} | {r['seed']} | "
                 + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
  for title, by_recipe in (("runs", False), ("recipe means", True)):
    table = correlations(rows, by_recipe)
    n = len({r['recipe'] for r in rows}) if by_recipe else len(rows)
    lines += ["", f"Spearman over {n} {title} (+1: the criterion's best is test's best):",
              "", "| criterion | " + " | ".join(TARGETS) + " |",
              "|---|" + "---|" * len(TARGETS)]
    for name, values in table.items():
      lines.append(f"| {name} | " + " | ".join(f"{values[t]:+.2f}" for t in TARGETS) + " |")
  return "\n".join(lines) + "\n"
