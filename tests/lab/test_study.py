"""A sealed study: the rule reads validation only, and test/ waits for a committed choice."""

import json
import os
import subprocess
import sys

import pytest

from cxr_lab import study
from cxr_lab import study_steps
from tests.conftest import REPO


def _plan(**changes) -> dict:
  plan = {"name": "toy", "root": "workdirs/studies/toy",
          "candidates": {"base": "configs/cnn_v2.py", "big": "configs/cnn_v3.py",
                         "wide": "configs/cnn_v3.py:s160", "slow": "configs/mobilenet.py"},
          "seeds": [0, 1, 2], "screen_seeds": [0], "advance": 2, "keep": ["base"],
          "overrides": ["data.split=blocked"], "criterion": "log_loss",
          "derived": ["ensemble"], "budget_train_seconds": 600.0, "operating_point": "0.5"}
  plan.update(changes)
  return plan


def _write_plan(folder, **changes) -> study.Plan:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, study.PLAN_FILE), "w") as f:
    json.dump(_plan(**changes), f)
  return study.Plan.load(folder)


def _results(losses: dict, costs: dict, extra: dict | None = None) -> dict:
  """{label: {"runs": {seed: {"log_loss", ...extra}}, "cost_train_seconds"}}."""
  return {label: {"runs": {str(s): {"log_loss": v, **(extra or {})}
                           for s, v in enumerate(values)},
                  "cost_train_seconds": costs[label]}
          for label, values in losses.items()}


def test_plan_names_its_problems(tmp_path):
  _write_plan(tmp_path / "ok")
  with pytest.raises(ValueError, match=r"unknown keys \['epochs'\], missing keys \['seeds'\]"):
    plan = _plan(epochs=3)
    del plan["seeds"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / study.PLAN_FILE).write_text(json.dumps(plan))
    study.Plan.load(str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="keep names 'gone'"):
    _write_plan(tmp_path / "keep", keep=["gone"])


def test_screen_advances_the_best_and_keeps_the_named(tmp_path):
  plan = _write_plan(tmp_path)
  results = _results({"base": [0.30], "big": [0.10], "wide": [0.20], "slow": [0.05]},
                     dict(base=1, big=1, wide=1, slow=1))
  assert study.screen(plan, results) == ["slow", "big", "base"]


def test_rule_picks_the_cheapest_within_one_std_of_the_best_and_a_default_in_budget(tmp_path):
  plan = _write_plan(tmp_path)
  results = _results({"base": [0.30, 0.32, 0.31], "big": [0.10, 0.16, 0.13],
                      "slow": [0.09, 0.11, 0.10], "wide": [0.2]},
                     dict(base=100.0, big=500.0, slow=2000.0, wide=50.0))
  choice = study.choose(plan, results)
  # slow is best (0.10 ± 0.01); big (0.13) is outside its band; "wide" has one seed.
  assert choice["chosen"] == "slow" and "wide" not in choice["candidates"]
  assert choice["make_train"] == "big"  # The best of what fits 600 s.
  results["big"]["runs"] = {"0": {"log_loss": 0.10}, "1": {"log_loss": 0.11},
                            "2": {"log_loss": 0.105}}
  assert study.choose(plan, results)["chosen"] == "big"  # Within the band, and cheaper.


def test_the_choice_is_the_same_with_or_without_test_scores(tmp_path):
  plan = _write_plan(tmp_path)
  losses = {"base": [0.3, 0.31, 0.29], "big": [0.2, 0.25, 0.22], "slow": [0.21, 0.2, 0.2]}
  costs = dict(base=1.0, big=2.0, slow=3.0)
  plain = study.choose(plan, _results(losses, costs))
  with_test = study.choose(plan, _results(losses, costs, {"test_accuracy": 0.99,
                                                          "accuracy": 0.5}))
  assert plain == with_test


def test_ensemble_is_the_mean_of_its_members_by_path():
  runs = [[{"path": "b", "label": 1, "prob": 0.9}, {"path": "a", "label": 0, "prob": 0.2}],
          [{"path": "a", "label": 0, "prob": 0.4}, {"path": "b", "label": 1, "prob": 0.5}]]
  labels, probs = study.ensemble_probs(runs)
  assert labels.tolist() == [0, 1] and probs.tolist() == pytest.approx([0.3, 0.7])
  with pytest.raises(ValueError, match="same images"):
    study.ensemble_probs([runs[0], runs[1][:1]])


def _git(folder, *args):
  subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def _committed_study(tmp_path):
  folder = tmp_path / "studies" / "toy"
  _write_plan(folder, root=str(tmp_path / "workdirs"))
  _git(tmp_path, "init", "-q")
  _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
  _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "plan")
  return folder


def test_a_plan_must_be_committed_before_the_first_run(tmp_path):
  folder = _committed_study(tmp_path)
  (folder / study.PLAN_FILE).write_text(json.dumps(_plan(advance=3)))  # Changed after.

  def never(*args, **kwargs):
    raise AssertionError("trained before the plan was committed")

  with pytest.raises(study.SealError, match="plan.json is not committed"):
    study_steps.run(str(folder), never)


def test_test_is_refused_until_the_choice_is_committed(tmp_path):
  folder = _committed_study(tmp_path)
  with pytest.raises(study.SealError, match="choice.json does not exist"):
    study_steps.ablate(str(folder))
  (folder / study.CHOICE_FILE).write_text("{}")
  with pytest.raises(study.SealError, match="choice.json is not committed"):
    study_steps.ablate(str(folder))


def test_the_ablation_command_refuses_in_one_line(tmp_path):
  folder = _committed_study(tmp_path)
  out = subprocess.run([sys.executable, "-m", "cxr_lab.tools.study", f"--study={folder}",
                        "--step=ablate"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 1
  first = out.stderr.strip().splitlines()[0]
  assert first.startswith("error: SealError: ") and "choice.json does not exist" in first
