"""The combined out-of-distribution detector: features and the raw-image thumbnail."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cxr_jax import export
from cxr_jax.fits import generated
from cxr_jax.fits import ood
from cxr_jax.fits import ood_signals


def _images(n, rng, size=32):
  """'X-rays': a bright body of varying width on a dark background, smooth texture."""
  y, x = np.mgrid[:size, :size] / size
  width = rng.uniform(0.25, 0.4, (n, 1, 1))
  body = np.exp(-((x - 0.5) ** 2) / (2 * width ** 2)) * (0.55 + rng.normal(0, 0.04, (n, 1, 1)))
  texture = rng.normal(0, 0.03, (n, size // 4, size // 4)).repeat(4, 1).repeat(4, 2)
  return np.clip(np.round(255 * (0.1 + body + texture)), 0, 255).astype(np.uint8)[..., None]


def _features(images):
  """Features that see only ranks (as after per-image histogram equalisation): blind to
  any monotone change of the grey scale, like the model's own."""
  flat = images.reshape(len(images), -1).astype(np.float64)
  ranks = flat.argsort(axis=1).argsort(axis=1) / flat.shape[1]
  return ranks.reshape(len(images), 8, 4, 8, 4).mean(axis=(2, 4)).reshape(len(images), -1
                                                                           ).astype(np.float32)


def _combined(rng, n_train=1500, n_val=1500):
  train, val = _images(n_train, rng), _images(n_val, rng)
  labels = np.arange(n_train) % 2
  features = ood.fit("mahalanobis", _features(train), labels, dims=16)
  combined = ood_signals.fit(features, train, _features(val), val, accept=0.99)
  return combined, features


def test_thumbnail_is_the_area_average_at_any_size():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  blocks = images.mean(-1).reshape(3, 32, 2, 32, 2).mean(axis=(2, 4)) / 255.0
  np.testing.assert_allclose(ood_signals.thumbnails(images).reshape(3, 32, 32), blocks, atol=1e-6)
  odd = rng.integers(0, 256, (2, 50, 70, 1), dtype=np.uint8)  # Not multiples of 32.
  thumb = ood_signals.thumbnails(odd)
  assert thumb.shape == (2, 1024)
  np.testing.assert_allclose(thumb.mean(axis=1), odd.mean(axis=(1, 2, 3)) / 255.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ood_signals.thumbnails(jnp.asarray(odd), xp=jnp)),
                             thumb, atol=1e-6)


def test_union_keeps_validation_at_its_rate_and_new_images_near_it():
  rng = np.random.default_rng(1)
  combined, _ = _combined(rng)
  val = _images(1500, np.random.default_rng(2))  # Not the validation images: a fresh draw.
  fresh = _images(3000, np.random.default_rng(3))
  scores = combined.score(_features(fresh), fresh)
  assert np.mean(scores > combined.threshold) < 0.02  # Target 1%; validation-quantile noise.
  # On its own validation split the union flags at most 1 - accept, and every signal
  # is at least at Bonferroni's level (each below its own 0.5% quantile's threshold).
  combined.set_threshold(_features(val), val, 0.99)
  ratios = combined.signal_scores(_features(val), val)
  assert np.mean(np.any(ratios > 1, axis=1)) <= 0.01
  assert np.all(np.mean(ratios > 1, axis=0) <= 0.01)


def test_thumbnail_flags_a_grey_scale_change_the_features_signal_misses():
  rng = np.random.default_rng(4)
  combined, features_alone = _combined(rng)
  alone = ood_signals.Combined({"features": features_alone})
  val = _images(1500, np.random.default_rng(5))
  alone.set_threshold(_features(val), val, 0.99)
  xrays = _images(64, np.random.default_rng(6))
  darker = np.round(255 * (xrays / 255.0) ** 3).astype(np.uint8)  # Another look-up table.
  assert np.mean(alone.score(_features(darker), darker) > alone.threshold) <= 0.05
  scores, signals = combined.score_and_signal(_features(darker), darker)
  assert np.all(scores > combined.threshold)
  assert set(signals) == {"thumbnail"}
  _, typical = combined.score_and_signal(_features(xrays), xrays)
  assert typical.count("") >= 60  # The same images before the change: accepted.


def test_far_shift_families_keep_shape_and_labels_order():
  xrays = _images(6, np.random.default_rng(7), size=48)
  families = generated.far_families(xrays, seed=0)
  assert set(families) == set(generated.FAR_FAMILIES)
  for name, images in families.items():
    assert images.dtype == np.uint8 and images.shape == xrays.shape, name
  half = families["half_inverted"].astype(int)
  assert np.sum(half == 255 - xrays) >= xrays.size // 2  # One half is the negative.
  letterbox = families["letterbox"]
  assert np.all(letterbox[:, :9] == 0) and np.all(letterbox[:, -9:] == 0)


def test_saved_detector_loads_and_an_old_file_still_scores_as_it_did(tmp_path):
  rng = np.random.default_rng(8)
  combined, features_alone = _combined(rng, 600, 600)
  val = _images(200, rng)
  combined.save(str(tmp_path / "ood.npz"))
  loaded = ood_signals.load(str(tmp_path / "ood.npz"))
  assert isinstance(loaded, ood_signals.Combined) and loaded.signals == ("features", "thumbnail")
  np.testing.assert_allclose(loaded.score(_features(val), val),
                             combined.score(_features(val), val), rtol=1e-6)
  # A file of the single features detector, as workdirs before the thumbnail hold it.
  features_alone.set_threshold(features_alone.score(_features(val)), 0.99)
  features_alone.save(str(tmp_path / "old.npz"))
  old = ood_signals.load(str(tmp_path / "old.npz"))
  assert isinstance(old, ood.Detector) and old.threshold == features_alone.threshold
  scores, signals = ood_signals.score_and_signal(old, _features(val), val)
  np.testing.assert_array_equal(scores, features_alone.score(_features(val)))
  assert set(signals) <= {"", "features"}


def test_export_scores_the_combined_detector_as_numpy_does():
  rng = np.random.default_rng(9)
  combined, _ = _combined(rng, 600, 600)
  images = np.concatenate([_images(8, rng), 255 - _images(4, rng)])
  expected = combined.score(_features(images), images)
  score = export._ood_score  # pylint: disable=protected-access
  got = score(combined, jnp.asarray(_features(images)), jnp.asarray(images))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)
  assert np.all(expected[8:] > combined.threshold)
