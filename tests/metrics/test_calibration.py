"""Bootstrap CIs, sensitivity threshold, ECE and temperature scaling on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_jax.metrics import calibration
from cxr_jax.metrics import classification as metrics
from cxr_jax.metrics.classification import binary_metrics


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """An imperfect classifier: ~62% PNEUMONIA, overlapping score distributions."""
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < 0.62).astype(np.int64)
  probs = np.clip(0.35 * labels + 0.65 * rng.random(n), 0, 1)
  return labels, probs


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def test_the_one_log_loss_is_the_clipped_cross_entropy_of_before():
  labels, probs = _scores(500, seed=3)
  probs = probs.astype(np.float32)
  probs[:4] = [0.0, 1.0, 1.0, np.nextafter(np.float32(1), np.float32(0))]  # Saturated.
  labels[:4] = [0, 1, 0, 1]
  # What sweeps and stress validation computed before it was one function, to the bit.
  clipped = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
  sweep = float(np.mean(-(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))))
  assert metrics.log_loss(labels, probs) == sweep
  assert metrics.log_loss(labels, probs) == pytest.approx(
      skm.log_loss(labels, clipped, labels=[0, 1]), rel=1e-12)
  assert binary_metrics(labels, probs, 0.3)["log_loss"] == metrics.log_loss(labels, probs)
  # Training and the report called scikit-learn on the raw probabilities: the same where
  # nothing saturates (its clip is the dtype's epsilon), and finite where something does.
  fine = slice(4, None)
  assert metrics.log_loss(labels[fine], probs[fine]) == pytest.approx(
      skm.log_loss(labels[fine], probs[fine], labels=[0, 1]), rel=1e-6)
  assert np.isfinite(metrics.log_loss([0], [1.0]))


def test_bootstrap_ci_contains_point_estimate_and_narrows_with_n():
  widths = {}
  for n in (150, 2400):
    labels, probs = _scores(n, seed=n)
    ci = calibration.bootstrap_ci(labels, probs, threshold=0.5, n_boot=400, seed=1)
    point = binary_metrics(labels, probs, 0.5)
    assert set(ci) == set(calibration.BOOTSTRAP_METRICS)
    for name, (low, high) in ci.items():
      assert 0 <= low <= point[name] <= high <= 1, (n, name, low, point[name], high)
    widths[n] = {name: high - low for name, (low, high) in ci.items()}
  for name in calibration.BOOTSTRAP_METRICS:
    # 16x the images: the interval should shrink ~4x; 2x is a safe margin.
    assert widths[2400][name] < widths[150][name] / 2, name


@pytest.mark.parametrize("threshold", [0.5, 0.99])  # 0.99: no positive predictions.
def test_vectorised_resample_metrics_equal_binary_metrics(threshold):
  labels, probs = _scores(12, seed=5)
  rng = np.random.default_rng(0)
  idx = rng.integers(0, 12, size=(12, 60))
  idx[:, 0] = np.flatnonzero(labels == 1)[0]  # A one-class resample.
  samples = calibration._resample_metrics(labels, probs, threshold, idx)
  auc_col = 0
  for b in range(idx.shape[1]):
    ref = binary_metrics(labels[idx[:, b]], probs[idx[:, b]], threshold)
    for name in calibration.BOOTSTRAP_METRICS[:-1]:
      assert samples[name][b] == pytest.approx(ref[name], abs=1e-12), (b, name)
    if ref["roc_auc"] is not None:
      assert samples["roc_auc"][auc_col] == pytest.approx(ref["roc_auc"], abs=1e-12), b
      auc_col += 1
  assert auc_col == len(samples["roc_auc"]) < idx.shape[1]


def test_bootstrap_ci_degenerate_cases():
  labels = np.array([0] * 30 + [1] * 30)
  perfect = calibration.bootstrap_ci(labels, labels * 0.8 + 0.1, 0.5, n_boot=50)
  assert all(v == (1.0, 1.0) for v in perfect.values()), perfect
  one_class = calibration.bootstrap_ci(np.ones(20, int), np.linspace(0, 1, 20), 0.5, n_boot=50)
  assert one_class["roc_auc"] is None
  assert one_class["specificity"] == (0.0, 0.0)  # zero_division=0, as binary_metrics.
  with pytest.raises(ValueError, match="shapes"):
    calibration.bootstrap_ci(labels, labels[:-1], 0.5)


def test_bootstrap_is_seeded():
  labels, probs = _scores(200, seed=3)
  a = calibration.bootstrap_ci(labels, probs, 0.5, n_boot=100, seed=7)
  b = calibration.bootstrap_ci(labels, probs, 0.5, n_boot=100, seed=7)
  c = calibration.bootstrap_ci(labels, probs, 0.5, n_boot=100, seed=8)
  assert a == b and a != c


def test_threshold_for_sensitivity_is_highest_reaching_target():
  rng = np.random.default_rng(0)
  pos = rng.permutation(np.linspace(0.30, 0.99, 20))  # 20 positives, distinct scores.
  neg = np.linspace(0.0, 0.6, 40)
  labels = np.array([1] * 20 + [0] * 40)
  probs = np.concatenate([pos, neg])
  t = calibration.threshold_for_sensitivity(labels, probs, target=0.95)
  # 19 of 20 positives must be >= t: t is the second-lowest positive score.
  assert t == pytest.approx(np.sort(pos)[1])
  assert binary_metrics(labels, probs, t)["recall"] == pytest.approx(0.95)
  assert binary_metrics(labels, probs, np.nextafter(t, 1))["recall"] < 0.95
  assert calibration.threshold_for_sensitivity(labels, probs, target=1.0) == pytest.approx(0.30)
  with pytest.raises(ValueError, match="PNEUMONIA"):
    calibration.threshold_for_sensitivity(np.zeros(5, int), np.linspace(0, 1, 5))


def test_threshold_for_sensitivity_with_ties():
  labels = np.array([1, 1, 1, 1, 0, 0])
  probs = np.array([0.9, 0.7, 0.7, 0.2, 0.7, 0.1])
  # Recall 0.75 needs the tied group at 0.7 (3 of 4 positives >= 0.7).
  assert calibration.threshold_for_sensitivity(labels, probs, target=0.75) == pytest.approx(0.7)


def test_ece_small_when_calibrated_large_when_overconfident():
  rng = np.random.default_rng(0)
  z = rng.normal(0, 2, 100_000)
  labels = (rng.random(z.shape) < _sigmoid(z)).astype(int)
  calibrated = calibration.expected_calibration_error(labels, _sigmoid(z))
  overconfident = calibration.expected_calibration_error(labels, _sigmoid(4 * z))
  assert calibrated < 0.01
  assert overconfident > 0.08
  # Always predicting the base rate is perfectly calibrated too.
  assert calibration.expected_calibration_error(
      labels, np.full(len(labels), labels.mean())) == pytest.approx(0, abs=1e-9)


def test_reliability_curve_agrees_with_ece():
  labels, probs = _scores(500, seed=4)
  curve = calibration.reliability_curve(labels, probs, n_bins=10)
  assert curve["count"].sum() == 500
  assert np.all(np.diff(curve["mean_predicted"]) > 0)
  ece = np.sum(curve["count"] * np.abs(curve["fraction_positive"] - curve["mean_predicted"])) / 500
  assert calibration.expected_calibration_error(labels, probs, n_bins=10) == pytest.approx(ece)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    calibration.expected_calibration_error(labels, probs + 1)


def test_fit_temperature_recovers_scale_and_lowers_ece():
  rng = np.random.default_rng(1)
  z = rng.normal(0, 1.5, 20_000)
  labels = (rng.random(z.shape) < _sigmoid(z)).astype(int)
  logits = 3 * z  # A model three times too confident.
  t = calibration.fit_temperature(labels, logits)
  assert t == pytest.approx(3.0, rel=0.07)
  before = calibration.expected_calibration_error(labels, _sigmoid(logits))
  after = calibration.expected_calibration_error(labels, calibration.apply_temperature(logits, t))
  assert after < before / 3 and after < 0.02


def test_fit_temperature_separable_data_stays_finite():
  logits = np.array([-5.0, -2.0, -1.0, 1.0, 3.0, 8.0])
  labels = (logits > 0).astype(int)
  t = calibration.fit_temperature(labels, logits)
  assert t == pytest.approx(calibration.T_MIN, rel=1e-3)
  probs = calibration.apply_temperature(logits, t)
  assert np.all(np.isfinite(probs)) and np.all((probs >= 0) & (probs <= 1))


def test_apply_temperature_and_logit_roundtrip():
  logits = np.array([-1e4, -30.0, -1.0, 0.0, 2.0, 1e4])
  probs = calibration.apply_temperature(logits, 1.0)
  np.testing.assert_allclose(probs[1:-1], _sigmoid(logits[1:-1]), rtol=1e-12, atol=1e-300)
  assert probs[0] == 0.0 and probs[-1] == 1.0
  np.testing.assert_allclose(calibration.probs_to_logits(probs[2:-1]), logits[2:-1], atol=1e-9)
  with pytest.raises(ValueError, match="temperature"):
    calibration.apply_temperature(logits, 0.0)
