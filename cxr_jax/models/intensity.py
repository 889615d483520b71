"""Per-image intensity standardisation: the first operation of a model that uses it.

Sites expose, window and process films differently; the training collection's classes do
too (black level, contrast: `benchmarks/cues/`). Standardising each image inside the
model makes training, evaluation, export and the web page see the same thing, because
they all run the model:

  "none"        the image as it is
  "percentile"  its 1st-99th percentile window stretched to [0, 1]: offset and gain gone
  "equalize"    histogram equalisation (its own cumulative histogram, piecewise linear
                over EQUALIZE_BINS bins, 0 stays 0): any monotone change of the grey
                scale (gamma, black level, window/level, contrast) is gone up to binning

Percentiles and the histogram are taken on every SAMPLE_STRIDE-th pixel of each axis (a
~1600-pixel sample at 160 px), and the histogram is sums of comparisons, not a sort or a
scatter, so every export runtime computes it exactly.
"""

from __future__ import annotations

import jax.numpy as jnp

KINDS = ("none", "percentile", "equalize")
PERCENTILES = (0.01, 0.99)
EQUALIZE_BINS = 64
SAMPLE_STRIDE = 4


def _sample(x):
  """[B, n] pixels of [B, H, W, C] images, every SAMPLE_STRIDE-th row and column."""
  return x[:, ::SAMPLE_STRIDE, ::SAMPLE_STRIDE, :].reshape(x.shape[0], -1)


def _percentile_window(x):
  low, high = jnp.quantile(_sample(x), jnp.asarray(PERCENTILES), axis=1)
  low, high = low[:, None, None, None], high[:, None, None, None]
  return jnp.clip((x - low) / jnp.maximum(high - low, 1.0 / 255.0), 0.0, 1.0)


def _equalize(x):
  sample = _sample(x)
  edges = jnp.linspace(0.0, 1.0, EQUALIZE_BINS + 1, dtype=x.dtype)
  # The fraction of the sample at or below each bin's upper edge (the last is 1).
  cdf = jnp.mean((sample[:, :, None] <= edges[None, None, 1:]).astype(x.dtype), axis=1)
  mass = jnp.diff(cdf, axis=1, prepend=jnp.zeros_like(cdf[:, :1]))  # [B, bins]
  out = jnp.zeros_like(x)
  for k in range(EQUALIZE_BINS):  # Piecewise linear through (edge_k, cdf_k); XLA fuses it.
    ramp = jnp.clip((x - edges[k]) * EQUALIZE_BINS, 0.0, 1.0)
    out = out + mass[:, k, None, None, None] * ramp
  return out


def standardize(x, kind: str):
  """[B, H, W, C] images in [0, 1], standardised per image by `kind` (one of KINDS)."""
  if kind == "none":
    return x
  if kind == "percentile":
    return _percentile_window(x)
  if kind == "equalize":
    return _equalize(x)
  raise ValueError(f"Unknown intensity standardisation {kind!r} (config.model.intensity); "
                   f"choose from {KINDS}.")
