"""Per-image intensity standardisation: invariant to what a site's exposure changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import intensity


def _chest_like(n=4, side=64, seed=0):
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[0:side, 0:side] / side
  base = 0.2 + 0.6 * np.exp(-((xs - 0.5) ** 2 + (ys - 0.5) ** 2) / 0.08)
  noise = rng.normal(0, 0.03, (n, side, side))
  return jnp.asarray(np.clip(base + noise, 0, 1)[..., None], jnp.float32)


def _exposures(x):
  return {"gamma": x ** 1.8, "black_level": 0.1 + 0.9 * x, "contrast": 0.3 + 0.5 * x}


@pytest.mark.parametrize("change", ["gamma", "black_level", "contrast"])
def test_equalize_undoes_monotone_exposure_changes(change):
  x = _chest_like()
  equalized = jax.jit(lambda v: intensity.standardize(v, "equalize"))
  reference = equalized(x)
  moved = equalized(_exposures(x)[change])
  # Up to the histogram's binning: far closer than the images were before.
  assert float(jnp.abs(moved - reference).mean()) < 0.02
  assert float(jnp.abs(_exposures(x)[change] - x).mean()) > 0.05


@pytest.mark.parametrize("change", ["black_level", "contrast"])
def test_percentile_window_undoes_offset_and_gain(change):
  x = _chest_like()
  window = jax.jit(lambda v: intensity.standardize(v, "percentile"))
  assert float(jnp.abs(window(_exposures(x)[change]) - window(x)).mean()) < 0.01


def test_equalize_keeps_black_black_and_spans_the_range():
  x = _chest_like().at[:, :8].set(0.0)
  out = np.asarray(intensity.standardize(x, "equalize"))
  assert out.min() == 0.0 and out[:, :8].max() == 0.0
  assert out.max() > 0.95 and 0.35 < np.median(out) < 0.65  # Roughly uniform after.


def test_none_is_the_identity_and_unknown_kinds_are_refused():
  x = _chest_like()
  assert intensity.standardize(x, "none") is x
  with pytest.raises(ValueError, match="config.model.intensity"):
    intensity.standardize(x, "clahe")


@pytest.mark.parametrize("kind", ["equalize", "percentile"])
def test_every_export_runtime_computes_the_same_standardisation(kind, tmp_path):
  """The model's first operation survives ONNX, SavedModel and LiteRT with a free batch
  (percentile's sort has no LiteRT op: that format is skipped, saying so)."""
  from cxr_jax import export

  def fn(images):
    x = intensity.standardize(images.astype(jnp.float32) / 255.0, kind)
    return x.mean(axis=(1, 2, 3)), x.reshape(x.shape[0], -1).max(axis=1) - x.min(axis=(1, 2, 3))

  serving = export.Serving(fn=jax.jit(fn), shape=(32, 32, 1), metadata={})
  images = np.asarray(np.clip(_chest_like(n=3, side=32) ** 1.5, 0, 1) * 255, np.uint8)
  want = [np.asarray(a) for a in serving.fn(images)]
  skipped = {}
  paths = export.export_all(serving, str(tmp_path), ("onnx", "saved_model", "tflite"), skipped)
  if kind == "percentile":  # Its sort has no LiteRT op: a named skip, the rest written.
    assert set(paths) == {"onnx", "saved_model"} and "LiteRT cannot convert" in skipped["tflite"]
    assert "sort" in skipped["tflite"] and "\n" not in skipped["tflite"]
  else:
    assert set(paths) == {"onnx", "saved_model", "tflite"} and not skipped
  for path in paths.values():
    got = export.Runtime(path)(images)
    for w, g in zip(want, got):
      np.testing.assert_allclose(g, w, atol=1e-5, err_msg=path)
