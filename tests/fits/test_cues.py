"""The acquisition-cue report on generated images with a planted cue."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_jax import data as data_lib
from cxr_jax.fits import cues
from cxr_jax.report import figures
from cxr_jax.inference import predictors as predictor_lib


def _planted(n=60, size=48, seed=0):
  """Noisy gray images; PNEUMONIA ones have a brighter left border (the planted cue)."""
  rng = np.random.default_rng(seed)
  labels = np.repeat([0, 1], n // 2)
  g = np.clip(0.45 + 0.08 * rng.normal(size=(n, size, size)), 0, 1)
  band = max(1, round(size * 0.08))
  g[labels == 1, :, :band] = np.clip(g[labels == 1, :, :band] + 0.3, 0, 1)
  images = (g * 255).astype(np.uint8)[..., None]
  return data_lib.DecodedSet(images, labels.astype(np.int32), [f"x{i}.png" for i in range(n)],
                             [str(i) for i in range(n)], [])


class _Reads(predictor_lib.Predictor):
  """A fake model whose probability is the mean of one region of the image."""

  def __init__(self, region):
    self.region = region

  def predict(self, images):
    g = images[..., 0].astype(np.float32) / 255.0
    return predictor_lib.Output(g[:, :, self.region].mean(axis=(1, 2)), None)


def test_the_planted_cue_has_the_only_high_auc():
  train = _planted()
  summary = cues.summarise(cues.measure(train.images), train.labels)
  assert summary["border_left"]["auc"] > 0.99
  for name in ("border_right", "black_level"):
    assert abs(summary[name]["auc"] - 0.5) < 0.25, name
  assert summary["border_left"]["PNEUMONIA"]["median"] > summary["border_left"]["NORMAL"]["median"]


def test_interventions_flip_a_border_reader_and_leave_a_centre_reader():
  train, val = _planted(seed=0), _planted(seed=1)
  border_reader, centre_reader = _Reads(slice(0, 4)), _Reads(slice(20, 28))
  threshold = 0.6  # Between the classes' left-border means (~0.45 and ~0.75).
  report = cues.cue_report({"train": train, "validation": val}, border_reader, threshold)
  assert report["sensitivity"]["validation"]["border_left"]["changed"] > 0.6
  report = cues.cue_report({"train": train, "validation": val}, centre_reader, 0.45)
  assert report["sensitivity"]["validation"]["border_left"]["changed"] < 0.2
  with pytest.raises(ValueError, match="border"):
    cues.intervene(val.images, "hue", np.zeros(len(val)))


def test_sharpness_is_moved_toward_its_target_and_the_plot_is_written(tmp_path):
  images = _planted().images
  before = cues.perturbations.cues(images)["sharpness"]
  softer = cues.set_sharpness(images, before * 0.5)
  assert np.all(cues.perturbations.cues(softer)["sharpness"] < before)
  measured = cues.measure(images)
  path = figures.cue_distributions(measured, _planted().labels, str(tmp_path / "cues.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_file_cues_read_size_aspect_and_jpeg_quality(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.full((30, 60), 128, np.uint8)).save(tmp_path / "a.jpeg", quality=40)
  Image.fromarray(np.full((30, 60), 128, np.uint8)).save(tmp_path / "b.png")
  out = cues.file_cues([str(tmp_path / "a.jpeg"), str(tmp_path / "b.png")])
  assert out["file_pixels"].tolist() == [1800, 1800] and out["file_aspect"][0] == 2.0
  assert abs(out["jpeg_quality"][0] - 40) <= 3 and np.isnan(out["jpeg_quality"][1])
