"""Data augmentation in JAX, run inside the jitted train step on the accelerator.

The set mirrors the Keras ImageDataGenerator used by the seed notebook: small
rotation, shift and zoom (one random affine map per image, bilinear, edge pixels
repeated like Keras's fill_mode="nearest"), then brightness and contrast jitter.
No horizontal flip by default: the heart sits on the patient's left, and a
mirrored chest is not an image the model will meet.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1], the input convention of every model."""
  return images.astype(jnp.float32) * (1.0 / 255.0)


def _bilinear_sample(image: jax.Array, src_y: jax.Array, src_x: jax.Array) -> jax.Array:
  """Samples image [H,W,C] at float coordinates [H,W]; out-of-range clamps to the edge."""
  height, width, channels = image.shape
  src_y = jnp.clip(src_y, 0.0, height - 1.0)
  src_x = jnp.clip(src_x, 0.0, width - 1.0)
  y0 = jnp.floor(src_y)
  x0 = jnp.floor(src_x)
  wy = (src_y - y0)[..., None]
  wx = (src_x - x0)[..., None]
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  y1 = jnp.minimum(y0 + 1, height - 1)
  x1 = jnp.minimum(x0 + 1, width - 1)
  flat = image.reshape(height * width, channels)

  def gather(yy, xx):
    return jnp.take(flat, (yy * width + xx).reshape(-1), axis=0).reshape(height, width, channels)

  top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
  bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
  return top * (1 - wy) + bottom * wy


def _affine_one(image, angle, shift_y, shift_x, zoom, flip):
  height, width, _ = image.shape
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing="ij")
  dy, dx = ys - cy, xs - cx
  dx = jnp.where(flip, -dx, dx)
  # Inverse map: where in the source each output pixel comes from.
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_x = (cos * dx + sin * dy) / zoom + cx - shift_x * width
  src_y = (-sin * dx + cos * dy) / zoom + cy - shift_y * height
  return _bilinear_sample(image, src_y, src_x)


def augment(rng: jax.Array, images: jax.Array, aug_config) -> jax.Array:
  """Random augmentation of a uint8 batch [B,H,W,C]; returns float32 in [0, 1].

  aug_config fields: enabled, rotation_degrees, shift_fraction, zoom_fraction,
  brightness, contrast, horizontal_flip (see configs/base.py).
  """
  x = to_float(images)
  if not aug_config.enabled:
    return x
  batch = x.shape[0]
  keys = jax.random.split(rng, 7)

  def uniform(key, limit):
    return jax.random.uniform(key, (batch,), minval=-limit, maxval=limit)

  angle = jnp.deg2rad(uniform(keys[0], aug_config.rotation_degrees))
  shift_y = uniform(keys[1], aug_config.shift_fraction)
  shift_x = uniform(keys[2], aug_config.shift_fraction)
  zoom = 1.0 + uniform(keys[3], aug_config.zoom_fraction)
  flip = (jax.random.bernoulli(keys[4], 0.5, (batch,)) if aug_config.horizontal_flip
          else jnp.zeros((batch,), bool))
  x = jax.vmap(_affine_one)(x, angle, shift_y, shift_x, zoom, flip)
  brightness = uniform(keys[5], aug_config.brightness)[:, None, None, None]
  contrast = 1.0 + uniform(keys[6], aug_config.contrast)[:, None, None, None]
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * contrast + mean + brightness
  return jnp.clip(x, 0.0, 1.0)
