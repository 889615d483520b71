"""How well each validation criterion tracks test: Spearman over a sweep's runs.

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
}
TARGETS = {
    "test accuracy @0.5": ("test", "at_0.5", "accuracy"),
    "test accuracy @validation F1 threshold": ("test", "at_validation_threshold", "accuracy"),
    "test ROC AUC": ("test", "at_0.5", "roc_auc"),
}


def _get(run: dict, path: tuple) -> float:
  node = run
  for key in path:
    if not isinstance(node, dict) or key not in node:
      return math.nan
    node = node[key]
  return float(node) if node is not None else math.nan


def runs_table(sweep: dict) -> list[dict]:
  """One row per run: recipe, seed, every criterion and target."""
  rows = []
  for recipe, entry in sweep.items():
    for run in entry.get("runs", []):
      row = {"recipe": recipe, "seed": run.get("seed")}
      row.update({name: _get(run, path) for name, (path, _) in CRITERIA.items()})
      row.update({name: _get(run, path) for name, path in TARGETS.items()})
      rows.append(row)
  return rows


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
    rows = [{k: float(np.nanmean([r[k] for r in rows if r["recipe"] == name])) for k in keys}
            for name in recipes]
  out = {}
  for name, (_, lower_better) in CRITERIA.items():
    sign = -1.0 if lower_better else 1.0
    out[name] = {t: sign * _spearman([r[name] for r in rows], [r[t] for r in rows])
                 for t in TARGETS}
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
