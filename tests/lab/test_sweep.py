"""Seeds as an axis: a debug sweep of two seeds, its table, and resuming it."""

from __future__ import annotations

import json
import os

import pytest

from configs import cnn_baseline
from cxr_jax import config_checks
from cxr_lab import sweep
from cxr_jax import train
from cxr_jax import workdir as workdir_lib
from tests.report.test_report import debug_config


def test_sweep_trains_each_seed_and_tables_mean_and_std(chest_xray_dir, tmp_path):
  config = debug_config(cnn_baseline, chest_xray_dir)
  root = str(tmp_path / "sweep")
  results = sweep.run_sweep({"cnn_baseline": config}, [0, 1], root, train.train_and_evaluate)
  runs = results["cnn_baseline"]["runs"]
  assert [r["seed"] for r in runs] == [0, 1]
  for seed in (0, 1):
    workdir = sweep.seed_workdir(root, "cnn_baseline", seed)
    assert json.load(open(os.path.join(workdir, "config.json")))["seed"] == seed
  stats = results["cnn_baseline"]["aggregate"]["test/0.5/accuracy"]
  values = [r["test"]["at_0.5"]["accuracy"] for r in runs]
  assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(values) / 2)
  assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
  table = open(os.path.join(root, sweep.TABLE_FILE)).read()
  assert "| cnn_baseline | 2 |" in table and "±" in table
  # Stress validation per run: the worst family is at least the mean, both in the table.
  stress = results["cnn_baseline"]["aggregate"]["stress/worst/log_loss"]
  assert stress["n"] == 2 and stress["mean"] >= results["cnn_baseline"]["aggregate"][
      "stress/mean/log_loss"]["mean"] > 0
  assert "stress log_loss @worst" in table
  # Test calibration per run (reported only), a column at no threshold.
  assert all(0 <= r["test"]["ece"] <= 1 for r in runs)
  assert "test ece" in table and "test ece @" not in table
  # The root's lock and each run's were held and released: no holder left on record.
  for folder in (root, sweep.seed_workdir(root, "cnn_baseline", 0)):
    assert open(os.path.join(folder, workdir_lib.LOCK_FILE)).read() == ""

  # Re-running reuses the finished runs instead of training them again.
  def refuse(*args, **kwargs):
    raise AssertionError("a finished run was trained again")
  again = sweep.run_sweep({"cnn_baseline": config}, [0, 1], root, refuse)
  assert again["cnn_baseline"]["aggregate"] == results["cnn_baseline"]["aggregate"]


def test_deadline_starts_no_new_run(chest_xray_dir, tmp_path):
  config = debug_config(cnn_baseline, chest_xray_dir)
  results = sweep.run_sweep({"x": config}, [0], str(tmp_path / "s"), train.train_and_evaluate,
                            deadline=0.0)
  assert results == {}


def test_a_refused_config_creates_no_root(chest_xray_dir, tmp_path):
  config = debug_config(cnn_baseline, chest_xray_dir)
  config.batch_size = 0
  with pytest.raises(config_checks.ConfigError, match="config.batch_size=0"):
    sweep.run_sweep({"x": config}, [0], str(tmp_path / "s"), train.train_and_evaluate)
  assert not (tmp_path / "s").exists()
