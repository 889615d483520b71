"""Out-of-distribution detectors, the generated cases, and where the score shows."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax import evaluate
from cxr_jax.fits import fit
from cxr_jax.fits import ood
from cxr_lab import ood_cases
from cxr_jax.fits import ood_signals
from cxr_jax import predict
from cxr_jax import registry
from cxr_jax.metrics import selective
from tests.conftest import SHARED
from tests.report.test_report import train_debug_workdirs


def clusters(n=400, dims=32, seed=0):
  """Two classes of Gaussian features around different means, with correlated noise.

  The means are far from the origin, as pooled ReLU features are (a cone, not a ball).
  """
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(dims, dims)) / np.sqrt(dims)
  labels = np.arange(n) % 2
  means = np.stack([np.full(dims, 5.0), np.full(dims, 5.8)])
  features = means[labels] + rng.normal(size=(n, dims)) @ mixing
  return features.astype(np.float32), labels


@pytest.mark.parametrize("kind", ["mahalanobis", "knn"])
def test_detectors_score_far_points_higher_and_accept_the_validation_quantile(kind, tmp_path):
  train, train_labels = clusters(seed=0)
  val, _ = clusters(n=200, seed=1)
  detector = ood.fit(kind, train, train_labels, dims=8)
  val_scores = detector.score(val)
  detector.set_threshold(val_scores, 0.9)
  assert np.mean(val_scores <= detector.threshold) == pytest.approx(0.9, abs=0.01)
  # Far from both classes, in other directions: flagged.
  far = np.random.default_rng(3).normal(scale=6.0, size=val.shape).astype(np.float32)
  assert np.all(~detector.in_distribution(detector.score(far)))
  assert np.median(detector.score(far)) > 5 * np.median(val_scores)
  detector.save(str(tmp_path / "ood.npz"))
  loaded = ood.Detector.load(str(tmp_path / "ood.npz"))
  assert loaded.kind == kind and loaded.threshold == detector.threshold
  np.testing.assert_allclose(loaded.score(val), val_scores, rtol=1e-6)


def test_mahalanobis_sees_directions_the_pca_left_out():
  train, labels = clusters(n=600, dims=40)
  detector = ood.fit("mahalanobis", train, labels, dims=4)
  val, _ = clusters(n=200, dims=40, seed=2)
  # A shift along the direction of least training variance is invisible to the top-4
  # principal directions, but not to the probabilistic PCA's noise term.
  _, _, vt = np.linalg.svd(train - train.mean(0), full_matrices=False)
  shifted = val + 8.0 * vt[-1]
  assert np.median(detector.score(shifted)) > 2 * np.median(detector.score(val))


def test_pca_detector_flags_images_reconstructed_too_well_or_too_badly():
  """Pixels of 'X-rays' (brightness, a few textures, noise of a level that varies from image
  to image, as exposures do): T^2 and Q tested apart, two-sided. Summed into one
  likelihood, a blank image's small Q hides its large T^2 among the noisy images."""
  from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  dims, textures = 400, rng.normal(size=(12, 400)) / np.sqrt(400)

  def images(n):
    return (0.5 + rng.normal(0, 0.05, (n, 1)) + rng.normal(0, 1.0, (n, 12)) @ textures
            + rng.normal(0, 1.0, (n, dims)) * 0.05 * np.exp(rng.normal(0, 0.4, (n, 1)))
            ).astype(np.float32)

  train, val = images(2000), images(500)
  detector = ood.pca_reconstruction(PCA(20).fit(train), train)
  detector.set_threshold(detector.score(val), 0.99)
  held_out = detector.score(images(500))
  assert np.mean(held_out > detector.threshold) < 0.04
  odd = {"blank": np.zeros((4, dims)), "constant": np.full((4, dims), 0.8),
         "noise": rng.uniform(0, 1, (4, dims)),
         # The training mean: no texture and no noise, "likelier" than any training image.
         "too smooth": np.tile(train.mean(0), (4, 1))}
  for name, x in odd.items():
    assert np.all(detector.score(x.astype(np.float32)) > detector.threshold), name


def test_unknown_kind_names_the_setting():
  with pytest.raises(ValueError, match="config.ood.kind"):
    ood.fit("energy", *clusters(n=20))


def test_risk_coverage_drops_errors_first_for_a_perfect_ranking():
  errors = np.array([0, 1, 0, 1, 0])
  perfect = selective.risk_coverage(errors, trust=-errors)
  shuffled = selective.risk_coverage(errors, trust=np.arange(5))
  assert perfect["risk"][-1] == shuffled["risk"][-1] == pytest.approx(0.4)
  assert perfect["aurc"] < shuffled["aurc"]
  assert perfect["risk"][0] == 0.0 and perfect["coverage"][0] == 0.0


def test_folder_shift_warns_only_when_more_are_flagged_than_chance_allows():
  # Like the training data: ~1% flagged of 600 is what the quantile threshold gives.
  typical = ood.folder_shift(6, 600, accept=0.99)
  assert not typical["shifted"] and typical["expected_fraction"] == pytest.approx(0.01)
  assert ood.shift_warning(6, 600, typical) is None
  # 12 photos, all flagged; or an adult site with 8% of 300 flagged: each far beyond chance.
  for n_flagged, n in ((12, 12), (24, 300)):
    shift = ood.folder_shift(n_flagged, n, accept=0.99)
    assert shift["shifted"] and shift["p_value"] < 1e-3
    assert "WARNING" in ood.shift_warning(n_flagged, n, shift)
  # Too few images to tell: 1 of 3 flagged is not evidence of a shift.
  assert not ood.folder_shift(1, 3, accept=0.99)["shifted"]
  assert not ood.folder_shift(0, 0, accept=0.99)["shifted"]
  # A detector's verdict on a folder's per-image flags is the same test at its own accept.
  detector = ood.Detector("mahalanobis", {}, threshold=1.0, accept=0.99)
  verdict = detector.folder_verdict(np.arange(300) >= 24)  # 24 of 300 out of distribution.
  assert verdict == ood.folder_shift(24, 300, accept=0.99) and verdict["shifted"]


def test_generated_families_have_the_model_input_shape(tmp_path):
  xrays = np.random.default_rng(0).integers(0, 256, (10, 48, 48, 1), dtype=np.uint8)
  photos = SHARED / "data" / "imagenet_photos"
  cases = ood_cases.make_cases(xrays, n=6, photos_dir=str(photos) if photos.exists() else None,
                               prep=data_lib.Preprocess(48, 1))
  expected = set(ood_cases.FAMILIES) - (set() if photos.exists() else {"photos"})
  assert set(cases) == expected
  for name, images in cases.items():
    assert images.dtype == np.uint8 and images.shape[1:] == (48, 48, 1), name
  np.testing.assert_array_equal(cases["blank"], 0)
  assert np.all(cases["constant"] == cases["constant"][:, :1, :1])
  assert cases["text"].min() < 64 and cases["text"].max() == 255  # Dark text on white.


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, chest_xray_dir):
  return train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs", chest_xray_dir)


@pytest.mark.parametrize("name, kind", [("cnn_baseline", "mahalanobis"),
                                        ("pca_logreg", "pca_reconstruction")])
def test_fitted_with_the_calibration_and_refitted_when_stale(workdirs, name, kind):
  workdir = str(workdirs / name)
  fitted = fit.load_or_fit(registry.load_predictor(workdir))
  assert fitted.detector.kind == kind and fitted.calibration["ood"]["kind"] == kind
  assert os.path.exists(os.path.join(workdir, workdir_lib.OOD_FILE))
  again = fit.load_or_fit(registry.load_predictor(workdir))
  assert again.reused and again.detector.threshold == fitted.detector.threshold
  # Validation accepted at the configured quantile (debug validation is small: ~1 image).
  val = data_lib.load(registry.load_predictor(workdir).config.data, "validation")
  scores = fitted.detector.score(registry.load_predictor(workdir).predict(
      val.images).features, val.images)
  assert np.mean(scores > fitted.detector.threshold) <= 0.05
  assert fitted.detector.signals == ("features", "thumbnail")


def test_a_workdir_whose_ood_npz_has_one_signal_is_refitted_with_both(workdirs, tmp_path,
                                                                      chest_xray_dir):
  """A workdir fitted before the thumbnail signal (calibration.json of fit version 6, an
  ood.npz of the features detector alone) still evaluates: load_or_fit refits it once."""
  import shutil  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "old")
  shutil.copytree(workdirs / "cnn_baseline", workdir)
  predictor = registry.load_predictor(workdir)
  new = fit.load_or_fit(predictor)
  features_alone = new.detector.detectors["features"]
  features_alone.threshold, features_alone.accept = 3.0, 0.99
  features_alone.save(os.path.join(workdir, workdir_lib.OOD_FILE))
  cal_path = os.path.join(workdir, workdir_lib.CALIBRATION_FILE)
  cal = json.load(open(cal_path))
  cal["source"]["version"], cal["ood"] = 6, {**cal["ood"], "threshold": 3.0}
  del cal["ood"]["signals"], cal["ood"]["signal_thresholds"]
  json.dump(cal, open(cal_path, "w"))
  assert isinstance(ood_signals.load(os.path.join(workdir, workdir_lib.OOD_FILE)), ood.Detector)
  refitted = fit.load_or_fit(predictor)
  assert not refitted.reused and refitted.detector.signals == ("features", "thumbnail")
  assert isinstance(ood_signals.load(os.path.join(workdir, workdir_lib.OOD_FILE)),
                    ood_signals.Combined)
  assert fit.load_or_fit(predictor).reused  # Refitted once, then kept.
  result = evaluate.evaluate_folder(workdir, str(chest_xray_dir / "test"), max_per_class=4)
  assert result["ood"]["signals"] == ["features", "thumbnail"]
  assert all(p["ood_signal"] in ("", "features", "thumbnail") for p in result["predictions"])


def test_predict_labels_flagged_images_out_of_distribution(workdirs, tmp_path, chest_xray_dir):
  workdir = str(workdirs / "cnn_baseline")
  inputs = tmp_path / "in"
  inputs.mkdir()
  xray = next((chest_xray_dir / "test" / "NORMAL").iterdir())
  (inputs / "xray.jpeg").write_bytes(xray.read_bytes())
  np.random.seed(0)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.random.randint(0, 256, (80, 80), dtype=np.uint8)).save(inputs / "noise.png")
  Image.fromarray(np.zeros((80, 80), np.uint8)).save(inputs / "blank.png")
  out = tmp_path / "p.csv"
  summary = predict.predict_files(workdir, [str(inputs)], str(out))
  rows = {os.path.basename(r["path"]): r for r in csv.DictReader(open(out))}
  cal = json.load(open(os.path.join(workdir, workdir_lib.CALIBRATION_FILE)))
  for row in rows.values():
    flagged = float(row["ood_score"]) > cal["ood"]["threshold"]
    assert row["in_distribution"] == ("0" if flagged else "1")
    assert (row["label_name"] == predict.OUT_OF_DISTRIBUTION) == flagged
    assert row["raw_probability"]  # The probability stays in its own column.
  assert summary["n_out_of_distribution"] == sum(r["in_distribution"] == "0"
                                                 for r in rows.values())
  assert "flagged OUT_OF_DISTRIBUTION" in predict.format_summary(summary)
  # Noise and a blank image are 2 of 3: far more than the ~1% of X-rays like training's.
  if summary["n_out_of_distribution"] >= 2:
    assert summary["folder_shift"]["shifted"]
    assert "WARNING" in predict.format_summary(summary)


def test_evaluate_reports_flagged_fraction_accepted_metrics_and_risk_coverage(workdirs,
                                                                             chest_xray_dir):
  result = evaluate.evaluate_folder(str(workdirs / "cnn_baseline"),
                                    str(chest_xray_dir / "test"), max_per_class=8)
  ood_summary = result["ood"]
  assert 0.0 <= ood_summary["fraction_flagged"] <= 1.0
  assert ood_summary["n_flagged"] == sum(not p["in_distribution"] for p in result["predictions"])
  assert ood_summary["folder_shift"] == ood.folder_shift(
      ood_summary["n_flagged"], result["n"], ood_summary["accept"])
  n_accepted = result["n"] - ood_summary["n_flagged"]
  if n_accepted:
    assert result["accepted"]["n"] == n_accepted
  for ranking in ("by_confidence", "by_ood_score"):
    curve = result["risk_coverage"][ranking]
    assert len(curve["risk"]) == selective.POINTS and 0.0 <= curve["aurc"] <= 1.0
  assert "flagged" in evaluate.format_result(result)
