"""The folder-level shift test, the label-free accuracy estimates and the perturbations."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_jax import registry
from cxr_jax.fits import fit
from cxr_jax.fits import folder_shift
from cxr_jax.fits import perturbations
from cxr_jax.inference import predictors as predictor_lib
from cxr_lab import shift_study
from tests.report.test_report import train_debug_workdirs


def _calibrated(n, rng, concentration=1.0):
  """Probabilities and labels drawn from them: a perfectly calibrated model."""
  probs = rng.beta(concentration, concentration, n)
  return probs, (rng.uniform(size=n) < probs).astype(np.int64)


def _reference(rng, n_val=300, dims=40):
  train = rng.normal(size=(1000, dims)).astype(np.float32)
  val = rng.normal(size=(n_val, dims))
  probs, labels = _calibrated(n_val, rng, 0.3)
  return folder_shift.Reference.fit(train, val, probs, labels, 0.5, 1.0, dims=16)


def test_planted_feature_shift_is_detected_and_its_absence_is_not():
  rng = np.random.default_rng(0)
  ref = _reference(rng)
  probs, _ = _calibrated(200, rng, 0.3)
  shifted = rng.normal(size=(200, 40)) + np.r_[np.full(5, 0.6), np.zeros(35)]
  result = folder_shift.shift_test(ref, shifted, probs, n_permutations=200)
  assert result["shifted"] and result["features"]["p_value"] < 0.01
  assert result["features"]["effect_size"] > 3
  alarms = [folder_shift.shift_test(ref, rng.normal(size=(100, 40)), _calibrated(100, rng, 0.3)[0],
                                    seed=s, n_permutations=200)["shifted"] for s in range(40)]
  assert np.mean(alarms) <= 0.1  # Nominal 5% (Bonferroni over two tests: at most).


def test_outputs_test_sees_a_changed_class_mix_that_features_alone_may_not():
  rng = np.random.default_rng(1)
  ref = _reference(rng)
  probs = np.clip(rng.beta(5, 1, 200), 0, 1)  # Nearly all called PNEUMONIA.
  result = folder_shift.shift_test(ref, rng.normal(size=(200, 40)), probs, n_permutations=200)
  assert result["outputs"]["p_value"] < 1e-3 and result["shifted"]
  assert result["outputs"]["predicted_pneumonia_rate"] > result["outputs"][
      "reference_pneumonia_rate"]


@pytest.mark.parametrize("method", folder_shift.ESTIMATORS)
def test_estimates_track_the_accuracy_of_a_calibrated_model_under_confidence_shift(method):
  rng = np.random.default_rng(2)
  ref = _reference(rng, n_val=2000)
  # DoC is exact in expectation for a calibrated model at any confidence; ATC's cut carries
  # over only while the confidence distribution keeps its shape (Garg et al. 2022).
  for concentration in ((0.3, 1.0, 3.0) if method == "doc" else (0.3, 0.4)):
    probs, labels = _calibrated(3000, rng, concentration)
    truth = folder_shift.accuracy(labels, probs, 0.5)
    est = folder_shift.estimate_accuracy(ref, probs, method, n_boot=100)
    assert abs(est["estimate"] - truth) < 0.03, (concentration, truth, est)
    assert est["ci95"][0] <= est["estimate"] <= est["ci95"][1]


def test_unknown_estimator_names_the_choices_and_tiny_folders_get_no_verdict():
  ref = _reference(np.random.default_rng(3))
  with pytest.raises(ValueError, match="atc"):
    folder_shift.estimate_accuracy(ref, np.array([0.5]), "magic")
  result = folder_shift.judge(ref, np.zeros((1, 40)), np.array([0.9]))
  assert not result["shifted"] and "Too few" in result["summary"]


def test_reference_round_trips_and_subsets_refit_their_derived_quantities(tmp_path):
  ref = _reference(np.random.default_rng(4))
  ref.save(str(tmp_path / "shift.npz"))
  loaded = folder_shift.Reference.load(str(tmp_path / "shift.npz"))
  assert loaded.threshold == ref.threshold and loaded.bandwidth == ref.bandwidth
  np.testing.assert_array_equal(loaded.features, ref.features)
  half = ref.subset(np.arange(100))
  assert len(half.probs) == 100 and half.bandwidth != ref.bandwidth


def _xrays(n=40, size=48, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0.25, 0.75, (n, 1, 1, 1))
  images = base + 0.1 * rng.normal(size=(n, size, size, 1))
  return (np.clip(images, 0, 1) * 255).astype(np.uint8)


def test_perturbations_move_each_cue_to_the_training_percentile():
  images = _xrays()
  severities = perturbations.Severities.fit(images)
  dark = perturbations.perturb(images, "border_dark", severities)
  assert np.median(perturbations.cues(dark)["border"]) == pytest.approx(
      severities.low["border"], abs=0.02)
  bright = perturbations.perturb(images, "gamma_bright", severities)
  assert np.median(perturbations.cues(bright)["median"]) == pytest.approx(
      severities.high["median"], abs=0.02)
  lifted = perturbations.perturb(images, "black_level", severities)
  assert np.min(perturbations.cues(lifted)["black_level"]) >= severities.high["black_level"] - 0.02
  blurred = perturbations.perturb(images, "low_resolution", severities)
  assert perturbations.cues(blurred)["sharpness"].mean() < perturbations.cues(images)[
      "sharpness"].mean()
  for family, x in perturbations.make_families(images, severities).items():
    assert x.shape == images.shape and x.dtype == np.uint8, family
  with pytest.raises(ValueError, match="border_dark"):
    perturbations.perturb(images, "sepia", severities)


def test_estimator_rule_picks_the_lower_median_error():
  errors = {f"f{i}": {"true": 0.9, "atc": 0.9 + d, "doc": 0.9 + 2 * d}
            for i, d in enumerate((0.01, -0.02, 0.05))}
  assert shift_study.choose_estimator(errors)["chosen"] == "atc"


def test_a_debug_workdir_fits_its_reference_and_judges_a_folder(tmp_path_factory, chest_xray_dir):
  workdirs = train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs",
                                  chest_xray_dir)
  predictor = registry.load_predictor(str(workdirs / "cnn_baseline"))
  fitted = fit.load_or_fit(predictor)
  assert fitted.shift is not None and len(fitted.shift.probs) > 0
  again = fit.load_or_fit(registry.load_predictor(str(workdirs / "cnn_baseline")))
  assert again.reused and again.shift.bandwidth == fitted.shift.bandwidth
  noise = np.random.default_rng(0).integers(0, 256, (30,) + predictor.preprocess.shape,
                                            dtype=np.uint8)
  out = predictor.predict(noise)
  result = folder_shift.judge(fitted.shift, out.features, out.probs)
  assert result["features"]["p_value"] < 0.05 and result["shifted"]
  assert 0 <= result["estimated_accuracy"]["estimate"] <= 1


def test_stress_scores_every_family_and_finds_the_worst():
  from cxr_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from cxr_lab import stress  # pylint: disable=import-outside-toplevel
  images = _xrays(n=40)
  labels = (np.arange(40) % 2).astype(np.int32)
  val = data_lib.DecodedSet(images, labels, [str(i) for i in range(40)],
                            [str(i) for i in range(40)], [])

  class Border(predictor_lib.Predictor):  # Reads the border band only: a shortcut model.
    def __init__(self):
      pass

    def predict(self, x):
      g = x[..., 0].astype(np.float32) / 255.0
      return predictor_lib.Output(np.clip(g[:, :, :3].mean(axis=(1, 2)), 0.01, 0.99), None)

  result = stress.stress_scores(Border(), val, perturbations.Severities.fit(images), 0.5)
  assert set(result["families"]) == set(perturbations.FAMILIES)
  assert result["worst"]["log_loss"] >= result["mean"]["log_loss"] >= 0
  assert result["worst"]["log_loss_family"] in ("border_dark", "border_bright", "gamma_dark",
                                                "gamma_bright", "black_level", "low_contrast")
