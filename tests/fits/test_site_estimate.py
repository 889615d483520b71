"""The folder accuracy interval: partial identification, the shift margin, its calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_jax.fits import fit
from cxr_jax.fits import folder_shift
from cxr_jax import registry
from cxr_jax.fits import site_calibration
from cxr_jax.fits import site_estimate
from tests.report.test_report import train_debug_workdirs


def _reference(rng, n=600, dims=20):
  """A calibrated model on validation: probabilities and labels drawn from them."""
  probs = rng.beta(0.3, 0.3, n)
  labels = (rng.uniform(size=n) < probs).astype(np.int64)
  train = rng.normal(size=(1000, dims)).astype(np.float32)
  return folder_shift.Reference.fit(train, rng.normal(size=(n, dims)), probs, labels, 0.5, 1.0,
                                    dims=8)


def test_interval_widens_with_the_flagged_share_and_is_not_estimable_past_the_limit():
  widths = []
  for n_ood in (0, 20, 40, 80, 120, 200):
    low, high = site_estimate.bounds(400, n_ood, 0.95, 0.01, 0.0, 1.0)
    assert low <= 0.95 * (400 - n_ood) / 400 + 1e-9 and high >= n_ood / 400
    widths.append(high - low)
  assert np.all(np.diff(widths) > 0)
  # The flagged images alone make it n_ood / n wide: past the limit, not estimable.
  assert site_estimate.estimable(*site_estimate.bounds(400, 40, 0.95, 0.01, 0.0, 1.0))
  assert not site_estimate.estimable(*site_estimate.bounds(400, 88, 0.95, 0.0, 0.0, 1.0))
  assert site_estimate.bounds(10, 10, 0.9, 0.0, 0.0, 1.0) == (0.0, 1.0)


def test_margin_grows_with_the_measured_shift_and_the_smallest_right_margin():
  narrow = site_estimate.bounds(400, 4, 0.95, 0.01, 0.02, 1.0)
  wide = site_estimate.bounds(400, 4, 0.95, 0.01, 0.05, 1.0)
  assert wide[1] - wide[0] > narrow[1] - narrow[0]
  # Truth 0.80, estimate 0.95: covered once the margin reaches ~0.13 (or not estimable).
  c = site_estimate.smallest_margin(400, 4, 0.95, 0.01, 0.05, truth=0.80)
  assert 0 < c < math.inf
  assert site_estimate.right(400, 4, 0.95, 0.01, 0.05, c, 0.80)
  assert not site_estimate.right(400, 4, 0.95, 0.01, 0.05, 0.9 * c, 0.80)
  # No measured shift: only sampling error; a far truth is then never right.
  assert site_estimate.smallest_margin(400, 4, 0.95, 0.01, 0.0, 0.80) == math.inf
  assert site_estimate.smallest_margin(400, 4, 0.95, 0.01, 0.0, 0.95) == 0.0


def test_conformal_margin_is_the_rank_of_the_level_and_infinite_when_too_few():
  scores = np.arange(1.0, 20.0)  # 19 families: ceil(20 * 0.9) = 18th smallest.
  assert site_estimate.conformal_margin(scores, 0.9) == 18.0
  assert site_estimate.conformal_margin([1.0, 2.0, 3.0], 0.9) == math.inf


def test_leave_one_family_out_judges_a_family_with_the_others_margin():
  def rec(family, truth, d):
    return site_calibration.Record(family, family, 400, 4, truth, {"doc": (0.95, 0.01)},
                                   {"ks": d})
  easy = [rec(f"f{i}", 0.95, 0.01) for i in range(12)]
  hard = rec("confidently_wrong", 0.70, 0.05)  # Needs c ~ 4.5; the others need 0.
  held_out = site_calibration.leave_one_family_out(easy + [hard], "doc", "ks")
  assert held_out["confidently_wrong"] == 0.0
  outcome = site_calibration.outcome(hard, "doc", "ks", held_out["confidently_wrong"])
  assert outcome["estimable"] and not outcome["right"]  # Honest: its own error is unseen.
  judged = site_calibration.judge_candidate(easy + [hard], "doc", "ks")
  assert judged["right"] == pytest.approx(12 / 13)


def test_judge_covers_an_in_distribution_folder_and_refuses_a_flagged_one():
  rng = np.random.default_rng(0)
  ref = _reference(rng)
  settings = {"estimator": "doc", "shift_measure": "ks", "margin": 1.0, "reference_flagged": []}
  probs = rng.beta(0.3, 0.3, 400)
  labels = (rng.uniform(size=400) < probs).astype(np.int64)
  features = rng.normal(size=(400, 20))
  accepted = np.ones(400, bool)
  answer = site_estimate.judge(settings, ref, features, probs, accepted)
  truth = folder_shift.accuracy(labels, probs, 0.5)
  assert answer["estimable"] and answer["interval"][0] <= truth <= answer["interval"][1]
  assert "between" in site_estimate.describe(answer)
  accepted[:120] = False  # 30% flagged: their accuracy could be anything.
  refused = site_estimate.judge(settings, ref, features, probs, accepted)
  assert not refused["estimable"] and refused["interval"] is None
  text = site_estimate.describe(refused, "workdirs/m", "/data/site")
  assert "not estimable without labels" in text and "30%" in text
  assert "cxr_jax.tools.audit --workdir=workdirs/m --data_dir=/data/site --budget=60" in text
  uncalibrated = site_estimate.judge(None, ref, features, probs, np.ones(400, bool))
  assert not uncalibrated["estimable"]
  # A folder the folder test calls shifted is not estimable, whatever its flagged share.
  gated = site_estimate.judge(settings, ref, features, probs, np.ones(400, bool),
                              {"shifted": True, "p_value": 1e-6})
  assert not gated["estimable"] and "unlike the validation data" in gated["reason"]
  assert gated["bounds"] == answer["bounds"]  # The bounds stay in the JSON, unprinted.


def test_a_debug_workdir_calibrates_its_margin_and_evaluate_says_it(tmp_path_factory,
                                                                    chest_xray_dir):
  from cxr_jax import evaluate  # pylint: disable=import-outside-toplevel
  workdirs = train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs",
                                  chest_xray_dir)
  workdir = str(workdirs / "cnn_baseline")
  fitted = fit.load_or_fit(registry.load_predictor(workdir))
  settings = fitted.calibration["site_estimate"]
  assert settings["estimator"] == site_estimate.DEFAULT_ESTIMATOR and settings["families"] > 20
  result = evaluate.evaluate_folder(workdir, str(chest_xray_dir / "test"), max_per_class=6)
  answer = result["folder_test"]["accuracy_interval"]
  text = evaluate.format_result(result)
  if answer["estimable"]:
    assert "Accuracy without labels: between" in text
  else:
    assert "not estimable without labels" in text and "cxr_jax.tools.audit" in text
  assert "Estimated accuracy without labels" not in text
