"""Grad-CAM (Selvaraju et al. 2017) for the Flax models of this repo, with JAX autodiff.

For a chosen layer with activations A [B, h, w, C]:
  weights[b, c] = mean over (h, w) of d logit[b] / d A[b, :, :, c]
  cam[b]        = ReLU(sum_c weights[b, c] * A[b, :, :, c]),
bilinearly upsampled to the input size and divided by its per-image maximum.

The layer is a submodule of the model, named by its Flax path joined with "/"
(e.g. "ConvBlock_3", "ConvBlock_3/Conv_1", "Conv_1"); its `__call__` output is
the activation. It is chosen, first match wins, by
  1. the `layer_name` argument;
  2. a `gradcam_layer` attribute of the model (a class attribute, dataclass
     field or property returning such a path);
  3. the last submodule call, in execution order, that returns a 4-D
     [B, h, w, C] array with h * w > 1: the last spatial feature map. For `CNN` that is the
     last ConvBlock (after its max-pool), for `CNNBaseline` the last Conv
     (before its ReLU and max-pool).

The activation and its gradient come from `flax.linen.intercept_methods`: the
chosen layer's output is replaced by output + delta (delta = 0) and the
gradient with respect to delta is the gradient with respect to the activation.
Unlike `Module.perturb` this needs no change to the model's code, and unlike
`capture_intermediates` alone it also yields gradients.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class LayerCall(NamedTuple):
  name: str  # "/"-joined Flax module path.
  shape: tuple[int, ...] | None  # None when the output is not a single array.
  dtype: Any


def _path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def _check_images(images01) -> jax.Array:
  x = jnp.asarray(images01)
  if x.ndim != 4:
    raise ValueError(f"images01 must be [B, H, W, C], got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"images01 must be float in [0, 1] (got {x.dtype}); "
                     "convert uint8 with augment.to_float.")
  return x


def layer_calls(model: nn.Module, variables, images01) -> list[LayerCall]:
  """Every submodule `__call__` of one inference pass, in the order they return.

  Only shapes are computed (jax.eval_shape), so this is cheap and works under jit.
  """
  x = _check_images(images01)
  calls: list[LayerCall] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path:
      is_array = hasattr(out, "shape") and hasattr(out, "dtype")
      calls.append(LayerCall(_path(context.module), tuple(out.shape) if is_array else None,
                             out.dtype if is_array else None))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return calls


def resolve_layer(model: nn.Module, variables, images01, layer_name: str | None = None) -> str:
  """The Grad-CAM layer: `layer_name`, else `model.gradcam_layer`, else the last 4-D output."""
  x = _check_images(images01)
  calls = layer_calls(model, variables, x)
  spatial = [c for c in calls if c.shape is not None and len(c.shape) == 4
             and c.shape[0] == x.shape[0]]
  name = layer_name or getattr(model, "gradcam_layer", None)
  if name is None:
    if not spatial:
      raise ValueError(f"{type(model).__name__} has no submodule returning a 4-D "
                       "[B, h, w, C] feature map; pass layer_name.")
    # A [B, 1, 1, C] output (a pooled vector kept 4-D) has nothing to localise.
    maps = [c for c in spatial if c.shape[1] * c.shape[2] > 1] or spatial
    return maps[-1].name
  matches = [c for c in calls if c.name == name]
  if not matches:
    names = [c.name for c in spatial]
    shown = ", ".join(names[-20:])  # The deepest ones; a MobileNet has ~150.
    raise ValueError(f"No layer {name!r} in {type(model).__name__}; layers with 4-D "
                     f"outputs{' (last 20)' if len(names) > 20 else ''}: {shown}.")
  if len(matches) > 1:
    raise ValueError(f"Layer {name!r} is called {len(matches)} times per forward pass; "
                     "Grad-CAM needs a layer called once.")
  if matches[0] not in spatial:
    raise ValueError(f"Layer {name!r} returns shape {matches[0].shape}, not a 4-D "
                     "[B, h, w, C] feature map.")
  return name


# Jitted with the model and options static: op-by-op the backward pass of a CNN is
# ~10x slower on CPU than one compiled call. Nested in a caller's jit it is inlined.
@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def gradcam_and_logits(model: nn.Module, variables, images01, layer_name: str | None = None,
                       class_index: int = 1) -> tuple[jax.Array, jax.Array]:
  """Grad-CAM heatmaps [B, H, W] in [0, 1] and the PNEUMONIA logits [B] of the same pass.

  class_index 1 explains the PNEUMONIA logit, 0 explains NORMAL (the negated
  logit). A map with no positive evidence is all zeros. Compiled once per model,
  layer_name, class_index and input shape.
  """
  if class_index not in (0, 1):
    raise ValueError(f"class_index must be 0 (NORMAL) or 1 (PNEUMONIA), got {class_index}.")
  x = _check_images(images01)
  name = resolve_layer(model, variables, x, layer_name)
  call = next(c for c in layer_calls(model, variables, x) if c.name == name)
  sign = 1.0 if class_index == 1 else -1.0

  def target(delta):
    captured = []

    def perturb(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and _path(context.module) == name:
        out = out + delta
        captured.append(out)
      return out

    with nn.intercept_methods(perturb):
      logits = model.apply(variables, x, train=False)
    # Inference mode: images do not interact (BatchNorm uses running statistics),
    # so the gradient of the sum holds each image's own gradient.
    return sign * jnp.sum(logits), (captured[0], logits)

  grads, (acts, logits) = jax.grad(target, has_aux=True)(jnp.zeros(call.shape, call.dtype))
  weights = jnp.mean(grads.astype(jnp.float32), axis=(1, 2))  # [B, C]
  cam = nn.relu(jnp.einsum("bhwc,bc->bhw", acts.astype(jnp.float32), weights))
  batch, height, width = x.shape[:3]
  cam = jax.image.resize(cam, (batch, height, width), method="bilinear")
  cam = jnp.maximum(cam, 0.0)  # Bilinear weights are >= 0; guards rounding only.
  peak = jnp.max(cam, axis=(1, 2), keepdims=True)
  cam = jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)
  return cam, logits


def gradcam(model: nn.Module, variables, images01, layer_name: str | None = None,
            class_index: int = 1) -> jax.Array:
  """Grad-CAM heatmaps [B, H, W] in [0, 1] of float32 images [B, H, W, C] in [0, 1].

  Already jitted (see gradcam_and_logits); inside another jit, keep the model,
  layer_name and class_index static.
  """
  return gradcam_and_logits(model, variables, images01, layer_name, class_index)[0]
