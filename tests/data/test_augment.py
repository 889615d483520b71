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


def test_policy_changes_each_image_by_its_own_drawn_operations():
  """Only magnitude: identity. With one operation per image, an image whose operation is
  geometric moves its pixels, one whose operation is an intensity change keeps its mean
  layout; the policy's strengths widen what the base strengths do."""
  images = _images(n=32)
  plain = augment.to_float(images)
  off = jax.jit(augment.augment)(jax.random.key(4), images,
                                 _strengths(policy_ops=0.0, policy_magnitude=1.0))
  np.testing.assert_allclose(off, plain, atol=1e-5)
  on = np.asarray(jax.jit(augment.augment)(jax.random.key(4), images,
                                           _strengths(policy_ops=1.0, policy_magnitude=1.0)))
  changed = np.abs(on - np.asarray(plain)).mean(axis=(1, 2, 3)) > 1e-3
  assert 0.75 < changed.mean() <= 1.0  # Each image draws one of 8 operations.
  assert on.min() >= 0.0 and on.max() <= 1.0


def test_policy_draws_exactly_policy_ops_operations_per_image():
  s = _strengths(policy_ops=3.0, policy_magnitude=0.5)
  extra = augment._policy(jax.random.key(5), 64, s)  # pylint: disable=protected-access
  active = np.stack([np.asarray(v) > 0 for v in extra.values()], axis=1)
  assert (active.sum(axis=1) == 3).all()
  for name, value in extra.items():
    assert np.allclose(np.asarray(value)[np.asarray(value) > 0],
                       0.5 * augment.POLICY_RANGES[name])
