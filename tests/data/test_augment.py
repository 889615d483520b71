"""The acquisition augmentations: identity at their identity strengths, and what they change."""

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.data import augment


def _images(n=8, side=40, seed=0):
  rng = np.random.default_rng(seed)
  smooth = rng.integers(60, 200, (n, side // 8, side // 8, 1)).astype(np.uint8)
  return jnp.asarray(np.kron(smooth, np.ones((1, 8, 8, 1), np.uint8)))


def _strengths(**overrides):
  return {k: jnp.float32(overrides.get(k, v)) for k, v in augment.STRENGTHS.items()}


def test_identity_strengths_leave_the_image_unchanged():
  images = _images()
  out = jax.jit(augment.augment)(jax.random.key(0), images, _strengths())
  np.testing.assert_allclose(out, augment.to_float(images), atol=1e-5)


def test_border_gain_changes_only_a_band_along_the_sides():
  images = _images(n=16)
  out = jax.jit(augment.augment)(jax.random.key(1), images, _strengths(border_gain=2.0))
  changed = np.abs(np.asarray(out) - np.asarray(augment.to_float(images)))[..., 0] > 1e-4
  side = images.shape[1]
  inner = int(np.ceil(side * augment.BORDER_BAND)) + 1
  assert not changed[:, inner:-inner, inner:-inner].any()  # The centre is never touched.
  assert changed.any(axis=(1, 2)).mean() > 0.5  # Most images get a band changed.


def test_resampling_blurs_the_chosen_fraction_and_keeps_the_rest():
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.integers(0, 256, (64, 32, 32, 1)), jnp.uint8)
  out = jax.jit(augment.augment)(jax.random.key(3), images, _strengths(resample_prob=0.5))
  diff = np.abs(np.asarray(out) - np.asarray(augment.to_float(images))).mean(axis=(1, 2, 3))
  resampled = diff > 1e-3
  assert 0.25 < resampled.mean() < 0.75
  # Down- then up-sampling removes fine detail: less pixel-to-pixel variation than before.
  grad = lambda x: np.abs(np.diff(np.asarray(x)[..., 0], axis=2)).mean(axis=(1, 2))
  assert (grad(out)[resampled] < 0.8 * grad(augment.to_float(images))[resampled]).all()
