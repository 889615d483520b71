"""Spearman of each validation criterion with test, over a generated sweep."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from cxr_jax.evaluation import criteria
from tests.conftest import REPO


def _run(seed, val_loss, stress_mean, test_acc, auc=0.99):
  return {"seed": seed,
          "summary": {"val": {"loss": val_loss, "roc_auc": auc}},
          "stress": {"mean": {"log_loss": stress_mean, "ece": stress_mean / 2},
                     "worst": {"log_loss": 4 * stress_mean}},
          "test": {"at_0.5": {"accuracy": test_acc, "roc_auc": auc},
                   "at_validation_threshold": {"accuracy": test_acc}}}


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
  proc = subprocess.run([sys.executable, "-m", "cxr_jax.tools.criteria", f"--sweep={path}",
                         f"--output={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = out.read_text()
  assert "Spearman over 5 runs" in text and "Spearman over 3 recipe means" in text
