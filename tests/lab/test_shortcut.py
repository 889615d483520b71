"""The border probe: a model reading a corner marker is caught, one reading the centre is not."""

from __future__ import annotations

import types

import numpy as np
import pytest

from cxr_jax import data as data_lib
from cxr_jax import registry
from cxr_lab import shortcut
from tests.report.test_report import train_debug_workdirs

SIZE = 50


class _Fake:
  """Scores p = mean of a region: the top-left corner (a marker) or the centre (the lungs)."""

  supports_gradcam = True

  def __init__(self, region, name="fake"):
    self.region = region
    self.model_name = name

  def predict(self, images):
    patch = images[:, self.region[0], self.region[1], 0].astype(np.float64)
    return types.SimpleNamespace(probs=patch.reshape(len(images), -1).mean(axis=1) / 255.0)

  def gradcam(self, images):
    maps = np.zeros(images.shape[:3])
    maps[:, self.region[0], self.region[1]] = 1.0
    return maps


def _marked_set(n=40, seed=0):
  """Gray images; PNEUMONIA ones carry a white "marker" in the top-left corner."""
  rng = np.random.default_rng(seed)
  images = rng.integers(90, 110, (n, SIZE, SIZE, 1)).astype(np.uint8)
  labels = np.arange(n) % 2
  images[labels == 1, 1:4, 1:4] = 255
  images[labels == 0, 1:4, 1:4] = 0
  return types.SimpleNamespace(images=images, labels=labels)


def test_mask_border_flattens_the_band_and_keeps_the_inside():
  images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 1)).astype(np.uint8)
  out = shortcut.mask_border(images, 0.1)
  band = shortcut.border_mask(SIZE, 0.1)
  assert band.sum() == SIZE * SIZE - 40 * 40
  np.testing.assert_array_equal(out[:, ~band], images[:, ~band])
  inner_mean = images[:, 5:45, 5:45, 0].reshape(3, -1).mean(axis=1)
  for i in range(3):
    assert np.all(np.abs(out[i][band].astype(float) - inner_mean[i]) <= 0.5)
  with pytest.raises(ValueError, match="border fraction"):
    shortcut.mask_border(images, 0.5)


def test_a_corner_reader_is_caught():
  corner = (slice(1, 4), slice(1, 4))
  result = shortcut.border_probe(_Fake(corner), _marked_set(), fraction=0.1, gradcam_images=8)
  assert result["original"]["accuracy"] == 1.0
  assert result["border_masked"]["accuracy"] == 0.5  # Every image now scores alike.
  assert result["flipped_pneumonia"] == 1.0 and result["flipped_normal"] == 0.0
  assert result["gradcam"]["mean_border_share"] == 1.0
  assert result["gradcam"]["images_over_half_in_border"] == 1.0


def test_a_centre_reader_is_not_affected():
  centre = (slice(20, 30), slice(20, 30))
  result = shortcut.border_probe(_Fake(centre), _marked_set(), fraction=0.1, gradcam_images=8)
  assert result["flipped"] == 0.0 and result["mean_abs_prob_change"] == 0.0
  assert result["gradcam"]["mean_border_share"] == 0.0
  assert "answers changed: 0.0%" in shortcut.format_probe("centre", result)


def test_summary_is_mean_and_std_over_the_runs_of_each_model():
  corner, centre = (slice(1, 4), slice(1, 4)), (slice(20, 30), slice(20, 30))
  results = {f"corner/{seed}": shortcut.border_probe(
      _Fake(corner, "corner"), _marked_set(seed=seed), 0.1, gradcam_images=0) for seed in (0, 1)}
  results["centre/0"] = shortcut.border_probe(_Fake(centre, "centre"), _marked_set(), 0.1,
                                              gradcam_images=4)
  summary = shortcut.summarize(results)
  assert summary["corner"]["accuracy"] == (1.0, 0.0, 2)
  assert summary["corner"]["PNEUMONIA changed"] == (1.0, 0.0, 2)
  assert "Grad-CAM in border" not in summary["corner"]  # Not asked for: left out, not 0.
  assert summary["centre"]["NORMAL changed"] == (0.0, 0.0, 1)
  table = shortcut.format_summary(summary)
  assert "| corner | 2 | 1.000 ± 0.000 | 0.500 ± 0.000 |" in table and "–" in table


def test_probe_of_a_trained_debug_model(tmp_path_factory, chest_xray_dir):
  root = train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs", chest_xray_dir)
  predictor = registry.load_predictor(str(root / "cnn_baseline"))
  data = data_lib.load_folder(str(chest_xray_dir / "test"), predictor.preprocess,
                              max_per_class=6)
  result = shortcut.border_probe(predictor, data, 0.08, gradcam_images=4)
  assert result["n"] == 12 and 0.0 <= result["flipped"] <= 1.0
  assert 0.0 <= result["gradcam"]["mean_border_share"] <= 1.0
  assert result["border_area_share"] == pytest.approx(
      shortcut.border_mask(predictor.image_size, 0.08).mean())
