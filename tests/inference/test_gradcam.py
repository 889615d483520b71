"""Grad-CAM: shapes and range on the repo's CNNs, localisation on a hand-built model, jit."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import cnn
from cxr_jax.inference import gradcam

SIZE = 16


class QuadrantFeatures(nn.Module):
  """2x2 average pool, then channel k = the pooled image inside quadrant k, else 0."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    h, w = x.shape[1:3]
    rows, cols = jnp.arange(h)[:, None] < h // 2, jnp.arange(w)[None, :] < w // 2
    masks = jnp.stack([rows & cols, rows & ~cols, ~rows & cols, ~rows & ~cols], axis=-1)
    return x * masks.astype(x.dtype)


class TopRightModel(nn.Module):
  """A logit that reads only the top-right quadrant of the image (channel 1)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    f = QuadrantFeatures(name="features")(x)
    h, w = f.shape[1:3]
    return jnp.mean(f[:, : h // 2, w // 2:, 1], axis=(1, 2)) * 4 - 1


def _init(model: nn.Module, x: jax.Array):
  # Jitted: eager init of a BatchNorm CNN takes tens of seconds on a busy 2-core CPU.
  return jax.jit(lambda key, x: model.init(key, x, train=False))(jax.random.key(1), x)


def _images(batch: int = 2, channels: int = 1) -> jax.Array:
  return jax.random.uniform(jax.random.key(0), (batch, SIZE, SIZE, channels))


def _top_right_images() -> jax.Array:
  # Brighter everywhere *outside* the region that matters: a heatmap that just
  # tracked intensity would peak in the wrong place.
  x = np.full((2, SIZE, SIZE, 1), 1.0, np.float32)
  x[:, : SIZE // 2, SIZE // 2:, 0] = 0.4
  x[1, 2:5, 10:13, 0] = 0.8  # A brighter spot inside the region for image 1.
  return jnp.asarray(x)


def test_heatmap_peaks_in_the_region_the_logit_depends_on():
  model = TopRightModel()
  x = _top_right_images()
  heat = np.asarray(gradcam.gradcam(model, {}, x))
  assert heat.shape == (2, SIZE, SIZE)
  half = SIZE // 2
  for b in range(2):
    peak = np.unravel_index(np.argmax(heat[b]), heat[b].shape)
    assert peak[0] < half and peak[1] >= half, (b, peak)
    # Away from the bilinear seam, nothing outside the top-right quadrant lights up.
    assert heat[b, half + 1:].max() == 0 and heat[b, :, : half - 1].max() == 0
    assert heat[b, : half - 1, half + 1:].min() > 0
  # Image 1's brighter spot inside the region is its maximum.
  assert 2 <= np.argmax(heat[1].max(axis=1)) <= 4


def test_matches_grad_cam_formula_on_hand_built_model():
  x = _top_right_images()
  pooled = np.asarray(nn.avg_pool(x, (2, 2), strides=(2, 2)))[..., 0]  # [B, 8, 8]
  expected = np.zeros_like(pooled)
  expected[:, :4, 4:] = pooled[:, :4, 4:]  # ReLU(w1 * A1) with w1 > 0; other weights 0.
  expected = np.array(jax.image.resize(jnp.asarray(expected), (2, SIZE, SIZE), "bilinear"))
  expected /= expected.max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(gradcam.gradcam(TopRightModel(), {}, x), expected, atol=1e-6)


def test_negative_evidence_gives_zero_map():
  # For NORMAL (the negated logit) the region only has negative weight: ReLU -> 0.
  heat = gradcam.gradcam(TopRightModel(), {}, _top_right_images(), class_index=0)
  assert float(jnp.max(heat)) == 0.0


@pytest.mark.parametrize("model, expected_layer", [
    (cnn.CNN(block_features=(4, 8), dense_features=8), "ConvBlock_1"),
    (cnn.CNNBaseline(conv_features=(4, 8), dense_features=(8, 4)), "Conv_1"),
])
def test_repo_models_default_layer_shape_range_and_jit(model, expected_layer):
  x = _images(batch=3)
  variables = _init(model, x)
  assert gradcam.resolve_layer(model, variables, x) == expected_layer
  heat, logits = gradcam.gradcam_and_logits(model, variables, x)
  np.testing.assert_allclose(logits, model.apply(variables, x, train=False), rtol=1e-5, atol=1e-6)
  heat = np.asarray(heat)
  assert heat.shape == (3, SIZE, SIZE) and heat.dtype == np.float32
  assert np.all(np.isfinite(heat)) and heat.min() >= 0 and heat.max() <= 1
  for b in range(3):
    assert heat[b].max() in (0.0, pytest.approx(1.0))
  # Nested in a caller's jit (e.g. a jitted report step), with the model static.
  jitted = jax.jit(gradcam.gradcam, static_argnums=0)
  np.testing.assert_allclose(jitted(model, variables, x), heat, atol=1e-5)


def test_model_can_declare_its_layer():
  class Declared(cnn.CNN):
    gradcam_layer = "ConvBlock_0"

  model = Declared(block_features=(4, 8), dense_features=8)
  x = _images()
  variables = _init(model, x)
  assert gradcam.resolve_layer(model, variables, x) == "ConvBlock_0"
  assert gradcam.resolve_layer(model, variables, x, "ConvBlock_1") == "ConvBlock_1"
  heat = gradcam.gradcam(model, variables, x, layer_name="ConvBlock_0/Conv_1")
  assert heat.shape == (2, SIZE, SIZE) and float(heat.max()) <= 1.0


def test_bad_layer_and_inputs_raise():
  model = cnn.CNN(block_features=(4,), dense_features=8)
  x = _images()
  variables = _init(model, x)
  with pytest.raises(ValueError, match="No layer 'nope'.*ConvBlock_0"):
    gradcam.gradcam(model, variables, x, layer_name="nope")
  with pytest.raises(ValueError, match="not a 4-D"):
    gradcam.gradcam(model, variables, x, layer_name="head")
  with pytest.raises(ValueError, match="augment.to_float"):
    gradcam.gradcam(model, variables, (x * 255).astype(jnp.uint8))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    gradcam.gradcam(model, variables, x[0])
