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
~1600-pixel sample at 160 px). Equalisation's histogram is sums of comparisons, not a sort
or a scatter, so every export runtime computes it; the percentile window sorts, which
LiteRT cannot convert (export skips that format, saying so).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("none", "percentile", "equalize")
PERCENTILES = (0.01, 0.99)
EQUALIZE_BINS = 64
SAMPLE_STRIDE = 4


def _sample(x):
  """[B, n] pixels of [B, H, W, C] images, every SAMPLE_STRIDE-th row and column.

  A reshape and a one-hot contraction, not a slice: with a free batch dimension a slice
  becomes a dynamic slice or gather that LiteRT cannot convert.
  """
  b, h, w, c = x.shape
  if h % SAMPLE_STRIDE or w % SAMPLE_STRIDE:
    return x.reshape(b, h * w * c)
  grid = x.reshape(b, h // SAMPLE_STRIDE, SAMPLE_STRIDE, w // SAMPLE_STRIDE, SAMPLE_STRIDE, c)
  first = jnp.zeros((SAMPLE_STRIDE,), x.dtype).at[0].set(1.0)
  picked = jnp.einsum("bipjqc,p,q->bijc", grid, first, first,
                      precision=jax.lax.Precision.HIGHEST)
  return picked.reshape(b, (h // SAMPLE_STRIDE) * (w // SAMPLE_STRIDE) * c)


def _percentile_window(x):
  low, high = jnp.quantile(_sample(x), jnp.asarray(PERCENTILES), axis=1)
  low, high = low[:, None, None, None], high[:, None, None, None]
  return jnp.clip((x - low) / jnp.maximum(high - low, 1.0 / 255.0), 0.0, 1.0)


def _equalize(x):
  sample = _sample(x)
  out = jnp.zeros_like(x)
  below = jnp.zeros(x.shape[:1], x.dtype)  # The fraction of the sample below the bin.
  for k in range(EQUALIZE_BINS):  # Piecewise linear through (edge_k, cdf_k); XLA fuses it.
    upper = (k + 1) / EQUALIZE_BINS
    # One reduction per bin, not a [B, bins] array and its columns: no slices to convert.
    cdf = jnp.mean((sample <= upper).astype(x.dtype), axis=1) if k + 1 < EQUALIZE_BINS else 1.0
    ramp = jnp.clip((x - k / EQUALIZE_BINS) * EQUALIZE_BINS, 0.0, 1.0)
    out = out + (cdf - below)[:, None, None, None] * ramp
    below = cdf
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
