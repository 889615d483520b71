"""How well the site audit's estimates and intervals work (`cxr_lab/tools/audit_bench`).

The model's probabilities are computed once on each labelled folder; each simulated
audit then picks `budget` images with `audit.select` (a new seed each), reveals their
labels and runs `audit.estimate`, exactly as a site would, and is compared with the
folder's true accuracy, sensitivity and specificity at the operating point.

Folders to design on come from the training and validation splits only: the two random
halves of validation, and the labelled folders of `generated.labelled_folders` (nine
acquisition perturbations with severities fitted on the training split, five x-ray OOD
families, two class mixes) made from the second half. test/ is added last, when asked,
and never used to change the method (docs/folder_shift.md, "Site audit").
"""

from __future__ import annotations

import numpy as np

from cxr_jax.fits import audit
from cxr_jax.fits import perturbations
from cxr_jax.fits import generated

BUDGETS = (30, 60, 100, 150)
TRIALS = 200
GOAL_COVERAGE = 0.93  # At 60 labels, on every folder, for every metric it can tell.
GOAL_HALF_WIDTH = {60: 0.08, 150: 0.05}  # Median half-width of the accuracy interval.


def truth(probs, labels, threshold: float) -> dict[str, float | None]:
  """The folder's own accuracy, sensitivity and specificity (None without that class)."""
  predicted = np.asarray(probs) >= threshold
  labels = np.asarray(labels).astype(bool)
  return {"accuracy": _rate(predicted == labels), "sensitivity": _rate(predicted[labels]),
          "specificity": _rate(~predicted[~labels])}


def _rate(x) -> float | None:
  return float(np.mean(x)) if len(x) else None


def one_audit(probs, labels, threshold: float, budget: int, seed: int) -> dict:
  """What a site would get from labelling `budget` images picked with `seed`."""
  chosen = audit.select(probs, budget, threshold, seed)
  sizes, predicted = audit.design(chosen.strata, probs, threshold)
  return audit.estimate(sizes, chosen.strata[chosen.indices], labels[chosen.indices], predicted)


def summarise(results: list[dict], true: dict) -> dict:
  """Coverage, half-widths, bias and spread of repeated audits of one folder, per metric."""
  out = {}
  for metric in audit.METRICS:
    told = [r[metric] for r in results if not r[metric]["cannot_tell"]]
    target = true[metric]
    row = {"cannot_tell": 1 - len(told) / len(results), "n_told": len(told)}
    if told and target is not None:
      est = np.array([m["estimate"] for m in told])
      ci = np.array([m["ci"] for m in told])
      row.update(coverage=float(np.mean((ci[:, 0] <= target) & (target <= ci[:, 1]))),
                 median_half_width=float(np.median((ci[:, 1] - ci[:, 0]) / 2)),
                 bias=float(est.mean() - target), sd=float(est.std()),
                 bias_se=float(est.std() / np.sqrt(len(est))))
    out[metric] = row
  return out


def simulate(probs, labels, threshold: float, budgets=BUDGETS, trials: int = TRIALS) -> dict:
  """{"n", "truth", "budgets": {budget: summary}} of one labelled folder."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
  true = truth(probs, labels, threshold)
  by_budget = {}
  for budget in budgets:
    if budget > len(probs):
      continue
    results = [one_audit(probs, labels, threshold, budget, seed) for seed in range(trials)]
    by_budget[str(budget)] = summarise(results, true)
  return {"n": int(len(probs)), "truth": true, "budgets": by_budget}


def design_folders(predictor, train, val, seed: int = 0
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{name: (own-scale probabilities, labels)}: validation's halves and the generated folders."""
  order = np.random.default_rng(seed).permutation(len(val))
  halves = {"validation_half_a": order[: len(val) // 2],
            "validation_half_b": order[len(val) // 2:]}
  severities = perturbations.Severities.fit(train.images)
  made = generated.labelled_folders(val.images[halves["validation_half_b"]],
                                      val.labels[halves["validation_half_b"]],
                                      severities, seed)
  folders = {name: (val.images[i], val.labels[i]) for name, i in halves.items()}
  folders.update(made)
  return {name: (np.asarray(predictor.predict(x).probs, np.float64), np.asarray(y))
          for name, (x, y) in folders.items()}


def worst(folders: dict, budget: int, metric: str) -> tuple[float | None, str | None]:
  """(lowest coverage, its folder) over the folders at `budget`."""
  rows = [(r["budgets"][str(budget)][metric].get("coverage"), name)
          for name, r in folders.items() if str(budget) in r["budgets"]]
  rows = [(c, name) for c, name in rows if c is not None]
  return min(rows) if rows else (None, None)


def goals(folders: dict) -> dict:
  """The plan's goals, met or not, over the design folders (test/ excluded)."""
  design = {n: r for n, r in folders.items() if n != "test"}
  out = {}
  for metric in audit.METRICS:
    coverage, name = worst(design, 60, metric)
    out[f"coverage_60_{metric}"] = {"worst": coverage, "folder": name,
                                    "met": coverage is not None and coverage >= GOAL_COVERAGE}
  for budget, goal in GOAL_HALF_WIDTH.items():
    widths = {n: r["budgets"][str(budget)]["accuracy"].get("median_half_width")
              for n, r in design.items() if str(budget) in r["budgets"]}
    if not widths:
      continue
    failing = sorted(n for n, w in widths.items() if w is None or w > goal)
    out[f"half_width_{budget}_accuracy"] = {"goal": goal, "max": max(widths.values()),
                                            "failing": failing, "met": not failing}
  return out
