"""The audit simulation: the folder's truth, coverage of repeated audits, and the goals."""

import numpy as np

from cxr_lab import audit_sim


def _folder(n: int = 300, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < 0.7).astype(int)
  probs = 1 / (1 + np.exp(-(np.where(labels == 1, 3.0, -3.0) + rng.normal(0, 2.5, n))))
  return probs, labels


def test_truth_is_the_folders_own_rates():
  probs = np.array([0.9, 0.8, 0.2, 0.6, 0.1])
  labels = np.array([1, 1, 1, 0, 0])
  assert audit_sim.truth(probs, labels, 0.5) == {"accuracy": 0.6, "sensitivity": 2 / 3,
                                                 "specificity": 0.5}
  assert audit_sim.truth(probs, np.ones(5, int), 0.5)["specificity"] is None


def test_simulated_audits_cover_and_skip_budgets_past_the_folder():
  probs, labels = _folder()
  result = audit_sim.simulate(probs, labels, 0.5, budgets=(30, 60, 400), trials=60)
  assert set(result["budgets"]) == {"30", "60"} and result["n"] == 300
  row = result["budgets"]["60"]["accuracy"]
  assert row["coverage"] >= 0.9 and 0 < row["median_half_width"] < 0.15
  assert abs(row["bias"]) < 4 * row["bias_se"] + 1e-3
  folders = {"a": result, "test": {"budgets": {"60": {m: {"coverage": 0.0, "cannot_tell": 0,
                                                          "median_half_width": 1.0}
                                                      for m in ("accuracy", "sensitivity",
                                                                "specificity")}}}}
  assert audit_sim.worst(folders, 60, "accuracy") == (0.0, "test")
  goals = audit_sim.goals(folders)  # test/ never counts towards the goals.
  assert goals["coverage_60_accuracy"]["folder"] == "a"
  assert goals["coverage_60_accuracy"]["met"] == (row["coverage"] >= audit_sim.GOAL_COVERAGE)
  assert "half_width_150_accuracy" not in goals or not goals["half_width_150_accuracy"]["met"]
