"""Spearman of each validation criterion with test, over a generated sweep."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from cxr_lab import criteria
from tests.conftest import REPO


def _run(seed, val_loss, stress_mean, test_acc, auc=0.99):
  return {"seed": seed,
          "summary": {"val": {"loss": val_loss, "roc_auc": auc}},
          "stress": {"mean": {"log_loss": stress_mean, "ece": stress_mean / 2},
                     "worst": {"log_loss": 4 * stress_mean}},
          "test": {"at_0.5": {"accuracy": test_acc, "roc_auc": auc, "specificity": test_acc},
                   "at_validation_threshold": {"accuracy": test_acc},
                   "ece": 1.0 - test_acc}}


def _sweep():
  # Stress loss falls as test accuracy rises; validation loss rises with it (backwards).
  return {"a": {"runs": [_run(0, 0.01, 0.30, 0.80), _run(1, 0.02, 0.28, 0.81)]},
          "b": {"runs": [_run(0, 0.03, 0.20, 0.85), _run(1, 0.04, 0.18, 0.86)]},
          "c": {"runs": [_run(0, 0.05, 0.10, 0.90)]}}


def test_spearman_is_signed_so_plus_one_means_the_criterion_picks_tests_best():
  rows = criteria.runs_table(_sweep())
  assert len(rows) == 5 and {r["recipe"] for r in rows} == {"a", "b", "c"}
  by_run = criteria.correlations(rows)
  assert by_run["stress mean log loss"]["test accuracy @0.5"] == pytest.approx(1.0)
  assert by_run["validation log loss"]["test accuracy @0.5"] == pytest.approx(-1.0)
  assert math.isnan(by_run["validation ROC AUC"]["test accuracy @0.5"])  # Constant.
  by_recipe = criteria.correlations(rows, by_recipe=True)
  assert by_recipe["stress worst log loss"]["test accuracy @0.5"] == pytest.approx(1.0)


def test_a_lower_is_better_target_is_signed_too():
  by_run = criteria.correlations(criteria.runs_table(_sweep()))
  # Lower stress loss goes with lower test ECE: the criterion's best is test's best.
  assert by_run["stress mean log loss"]["test ECE"] == pytest.approx(1.0)
  assert by_run["validation log loss"]["test ECE"] == pytest.approx(-1.0)


def test_blocked_twins_give_their_recipe_the_blocked_criterion():
  sweep = _sweep()
  # Blocked loss falls as test accuracy rises; the twins' own rows are not recipes.
  sweep["m-a+blocked"] = {"runs": [_run(0, 0.5, 0, 0), _run(1, 0.4, 0, 0)]}
  sweep["m-b+blocked"] = {"runs": [_run(0, 0.3, 0, 0), _run(1, 0.2, 0, 0)]}
  sweep["m-c+blocked"] = {"runs": [_run(0, 0.1, 0, 0)]}
  for name in ("a", "b", "c"):
    sweep[f"m-{name}"] = sweep.pop(name)
  rows = criteria.runs_table(sweep)
  assert {r["recipe"] for r in rows} == {"m-a", "m-b", "m-c"}
  assert [r["blocked validation log loss"] for r in rows] == [0.5, 0.4, 0.3, 0.2, 0.1]
  assert criteria.correlations(rows)["blocked validation log loss"]["test accuracy @0.5"] == (
      pytest.approx(1.0))
  assert criteria.blocked_twin("m") == "m-blocked"


def test_merged_sweeps_keep_the_later_run_of_a_recipe_and_seed():
  first, second = _sweep(), {"c": {"runs": [_run(0, 0.07, 0.05, 0.95), _run(1, 0.06, 0.04, 0.96)]}}
  merged = criteria.merge([first, second])
  assert [r["test"]["at_0.5"]["accuracy"] for r in merged["c"]["runs"]] == [0.95, 0.96]
  assert len(merged["a"]["runs"]) == 2


def test_missing_numbers_are_left_out_not_guessed():
  sweep = _sweep()
  del sweep["c"]["runs"][0]["stress"]
  rows = criteria.runs_table(sweep)
  assert math.isnan(rows[-1]["stress mean log loss"])
  assert criteria.correlations(rows)["stress mean log loss"]["test accuracy @0.5"] == (
      pytest.approx(1.0))  # Over the four runs that have it.


def test_command_line_writes_the_tables(tmp_path):
  path = tmp_path / "sweep.json"
  path.write_text(json.dumps(_sweep()))
  out = tmp_path / "criteria.md"
  proc = subprocess.run([sys.executable, "-m", "cxr_lab.tools.criteria", f"--sweep={path}",
                         f"--output={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = out.read_text()
  assert "Spearman over 5 runs" in text and "Spearman over 3 recipe means" in text
  # Two files: the second's recipe joins the first's.
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"d": {"runs": [_run(0, 0.06, 0.05, 0.93)]}}))
  proc = subprocess.run([sys.executable, "-m", "cxr_lab.tools.criteria", f"--sweep={path}",
                         f"--sweep={other}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0 and "Spearman over 4 recipe means" in proc.stdout
