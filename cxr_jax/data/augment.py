"""Data augmentation in JAX, run inside the jitted train step on the accelerator.

Geometric: one random affine map per image (small rotation, shift, zoom, and a
random resized crop folded into the same map), bilinear, edge pixels repeated like
Keras's fill_mode="nearest". Acquisition: the outer band of each side darkened or
brightened (collimation, film borders), and down- then up-sampling (a coarser detector).
Intensity: gamma, brightness and contrast jitter, Gaussian blur and Gaussian noise.
Policy (RandAugment-style, Cubuk et al. 2020): each image also draws `policy_ops` of the
POLICY_RANGES operations, whose range widens by `policy_magnitude` of the range listed.
No horizontal flip by default: the heart sits on
the patient's left, and a mirrored chest is not an image the model will meet.

Every strength is a traced scalar (`strengths(config.augment)`, kept in the train
state), not a constant of the compiled step: recipes that differ only in their
augmentation share one compiled program. A strength of 0 (gamma 1, crop scale 1) is
the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Fields of config.augment that are strengths (traced), with their identity values.
STRENGTHS = {
    "rotation_degrees": 0.0,   # Uniform in [-r, r] degrees.
    "shift_fraction": 0.0,     # Uniform in [-s, s] of the side, each axis.
    "zoom_fraction": 0.0,      # Zoom factor uniform in [1 - z, 1 + z].
    "crop_scale_min": 1.0,     # Random resized crop: area fraction uniform in [c, 1].
    "brightness": 0.0,         # Added, uniform in [-b, b].
    "contrast": 0.0,           # Factor uniform in [1 - c, 1 + c] around the image mean.
    "gamma": 1.0,              # x ** g' with log g' uniform in [-log g, log g].
    "blur_sigma": 0.0,         # Gaussian blur, sigma uniform in [0, s] pixels.
    "noise_std": 0.0,          # Gaussian noise, std uniform in [0, n].
    "border_gain": 1.0,        # Each side's outer band (width uniform in [0, BORDER_BAND]
                               # of the side) times g' with log g' uniform in [-log g, log g].
    "resample_prob": 0.0,      # Fraction of images down- then up-sampled by one of
                               # RESAMPLE_FACTORS, chosen uniformly.
    "policy_ops": 0.0,         # Operations of POLICY_RANGES drawn per image (0: none).
    "policy_magnitude": 0.0,   # Their range: this fraction (0 to 1) of POLICY_RANGES'.
}
# The policy's operations and their extra range at magnitude 1 (gamma: of log gamma).
POLICY_RANGES = {"rotation_degrees": 30.0, "shift_fraction": 0.15, "zoom_fraction": 0.25,
                 "brightness": 0.3, "contrast": 0.5, "gamma": 0.6931, "blur_sigma": 1.5,
                 "noise_std": 0.05}
_BLUR_RADIUS = 3  # Taps each side: enough for sigma <= ~1.5 px.
BORDER_BAND = 0.12
RESAMPLE_FACTORS = (0.75, 0.5, 0.375, 0.25)


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1], the input convention of every model."""
  return images.astype(jnp.float32) * (1.0 / 255.0)


def strengths(aug_config) -> dict[str, float]:
  """The traced strengths of config.augment; all identity when augmentation is disabled."""
  if not aug_config.enabled:
    return dict(STRENGTHS)
  return {k: float(aug_config[k]) for k in STRENGTHS}


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


def _policy(key, batch: int, s: dict) -> dict[str, jax.Array]:
  """{operation: [B] extra range}: `policy_ops` operations per image, the rest 0."""
  names = list(POLICY_RANGES)
  draw = jax.random.uniform(key, (batch, len(names)))
  rank = jnp.argsort(jnp.argsort(draw, axis=1), axis=1)
  active = (rank < s["policy_ops"]).astype(jnp.float32) * s["policy_magnitude"]
  return {name: active[:, i] * POLICY_RANGES[name] for i, name in enumerate(names)}


def _geometry(keys, batch: int, s: dict, extra: dict, flip_enabled: bool):
  def uniform(key, limit):
    return jax.random.uniform(key, (batch,), minval=-1.0, maxval=1.0) * limit

  angle = jnp.deg2rad(uniform(keys[0], s["rotation_degrees"] + extra["rotation_degrees"]))
  shift_y = uniform(keys[1], s["shift_fraction"] + extra["shift_fraction"])
  shift_x = uniform(keys[2], s["shift_fraction"] + extra["shift_fraction"])
  zoom = 1.0 + uniform(keys[3], s["zoom_fraction"] + extra["zoom_fraction"])
  # Random resized crop: keep an area fraction a in [crop_scale_min, 1] (zoom in by
  # 1/sqrt(a)) at a random position inside the image.
  area = jax.random.uniform(keys[4], (batch,), minval=s["crop_scale_min"], maxval=1.0)
  crop_zoom = jax.lax.rsqrt(jnp.maximum(area, 1e-3))
  room = 0.5 * (1.0 - 1.0 / crop_zoom)
  shift_y = shift_y + uniform(keys[5], room)
  shift_x = shift_x + uniform(keys[6], room)
  flip = (jax.random.bernoulli(keys[7], 0.5, (batch,)) if flip_enabled
          else jnp.zeros((batch,), bool))
  return angle, shift_y, shift_x, zoom * crop_zoom, flip


def _blur(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """Separable Gaussian blur of [B,H,W,C] with a per-image sigma (0 = identity), edges repeated."""
  taps = jnp.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=jnp.float32)
  safe = jnp.maximum(sigma, 1e-3)[:, None]
  weights = jnp.exp(-0.5 * jnp.square(taps[None, :] / safe))
  weights = weights / jnp.sum(weights, axis=1, keepdims=True)  # [B, taps]
  r = _BLUR_RADIUS
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    padded = jnp.pad(x, pad, mode="edge")
    size = x.shape[axis]
    x = sum(weights[:, i, None, None, None]
            * jax.lax.slice_in_dim(padded, i, i + size, axis=axis)
            for i in range(2 * r + 1))
  return x


def _border(keys, x: jax.Array, s: dict) -> jax.Array:
  """Scales a band of random width along each side by one random gain per image."""
  batch, height, width, _ = x.shape
  widths = jax.random.uniform(keys[0], (batch, 4), maxval=BORDER_BAND)
  log_gain = jnp.log(jnp.maximum(s["border_gain"], 1.0))
  gain = jnp.exp(jax.random.uniform(keys[1], (batch, 1, 1, 1), minval=-1.0, maxval=1.0)
                 * log_gain)
  ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
  xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
  top, bottom, left, right = (widths[:, i, None, None] for i in range(4))
  band = ((ys[None, :, None] < top) | (ys[None, :, None] > 1.0 - bottom)
          | (xs[None, None, :] < left) | (xs[None, None, :] > 1.0 - right))
  return jnp.where(band[..., None], jnp.clip(x * gain, 0.0, 1.0), x)


def _resample(keys, x: jax.Array, s: dict) -> jax.Array:
  """Down- then up-sampling (antialiased, bilinear) of a resample_prob fraction of images."""
  batch, height, width, channels = x.shape
  chosen = jax.random.randint(keys[0], (batch,), 0, len(RESAMPLE_FACTORS))
  apply = jax.random.uniform(keys[1], (batch,)) < s["resample_prob"]

  def resample_some(x):
    out = x
    for i, factor in enumerate(RESAMPLE_FACTORS):
      small = (batch, max(1, round(height * factor)), max(1, round(width * factor)), channels)
      coarse = jax.image.resize(jax.image.resize(x, small, "linear"), x.shape, "linear")
      out = jnp.where((apply & (chosen == i))[:, None, None, None], coarse, out)
    return out

  # A run-time branch: recipes without it pay nothing, and still share one program.
  return jax.lax.cond(s["resample_prob"] > 0, resample_some, lambda x: x, x)


def _intensity(keys, x: jax.Array, s: dict, extra: dict) -> jax.Array:
  batch = x.shape[0]

  def limit(name):
    return (s[name] + extra[name])[..., None, None, None] if name in extra else s[name]

  def uniform(key, bound):
    return jax.random.uniform(key, (batch, 1, 1, 1), minval=-1.0, maxval=1.0) * bound

  log_gamma = jnp.log(jnp.maximum(s["gamma"], 1.0)) + extra["gamma"][:, None, None, None]
  x = jnp.power(jnp.clip(x, 1e-6, 1.0), jnp.exp(uniform(keys[0], log_gamma)))
  brightness = uniform(keys[1], limit("brightness"))
  contrast = 1.0 + uniform(keys[2], limit("contrast"))
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * contrast + mean + brightness
  sigma = jax.random.uniform(keys[3], (batch,)) * (s["blur_sigma"] + extra["blur_sigma"])
  x = _blur(x, sigma)
  noise_std = jax.random.uniform(keys[4], (batch, 1, 1, 1)) * limit("noise_std")
  x = x + noise_std * jax.random.normal(keys[5], x.shape)
  return jnp.clip(x, 0.0, 1.0)


def _acquisition(keys, x: jax.Array, s: dict) -> jax.Array:
  return _resample(keys[2:], _border(keys[:2], x, s), s)


def augment(rng: jax.Array, images: jax.Array, s: dict, horizontal_flip: bool = False
            ) -> jax.Array:
  """Random augmentation of a uint8 batch [B,H,W,C]; returns float32 in [0, 1].

  s: {name: traced scalar} for every key of STRENGTHS (see `strengths`).
  horizontal_flip: static; a chest X-ray is never flipped in the shipped configs.
  """
  x = to_float(images)
  geometry_keys, intensity_keys = jax.random.split(rng)
  # New streams by fold_in: recipes without them keep their random numbers.
  acquisition_keys = jax.random.fold_in(rng, 1)
  extra = _policy(jax.random.fold_in(rng, 2), x.shape[0], s)
  geometry = _geometry(jax.random.split(geometry_keys, 8), x.shape[0], s, extra,
                       horizontal_flip)
  x = jax.vmap(_affine_one)(x, *geometry)
  x = _acquisition(jax.random.split(acquisition_keys, 4), x, s)
  return _intensity(jax.random.split(intensity_keys, 6), x, s, extra)
