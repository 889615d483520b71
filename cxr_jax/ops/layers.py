"""Convolution and pooling layers that train fast on XLA:CPU as well as on accelerators.

XLA:CPU computes the weight gradient of a dense convolution ~10x slower than the
same numbers as one matrix product (measured: 3x3, 32->64 channels, 32x32x32
input: 590 ms vs ~60 ms), and the gradient of `nn.max_pool` (select-and-scatter)
~4x slower than of a reshape + max. `Conv` keeps XLA's convolution for the forward
pass and the input gradient, and computes the kernel gradient as
patches^T @ output_gradient; `max_pool_2x2` is a reshape + max. Which form runs is
the policy of `cxr_jax.ops` (`impl`: "auto", "xla" or "cpu"). Parameters are named and
shaped exactly like `flax.linen.Conv`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cxr_jax import ops

_DIMS = ("NHWC", "HWIO", "NHWC")


def _same_padding(kernel_size: int) -> tuple[int, int]:
  return ((kernel_size - 1) // 2, kernel_size // 2)


def _extract_patches(x, kh: int, kw: int, strides: tuple[int, int], pads):
  """[B*Ho*Wo, kh*kw*C] patches, tap-major like an HWIO kernel's reshape."""
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  (sh, sw), c = strides, x.shape[-1]
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  taps = [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1,
                                       j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def strided_conv(x, kernel, strides: tuple[int, int], pads: tuple[tuple[int, int], ...]):
  """NHWC x HWIO convolution (explicit padding) with a patches @ gradient kernel gradient."""
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMS)


def _strided_conv_fwd(x, kernel, strides, pads):
  return strided_conv(x, kernel, strides, pads), (x, kernel)


def _strided_conv_bwd(strides, pads, residuals, g):
  x, kernel = residuals
  kh, kw, _, c_out = kernel.shape
  g = lax.optimization_barrier(g)
  grad_kernel = _extract_patches(x, kh, kw, strides, pads).T @ g.reshape(-1, c_out)
  # Autodiff's transposed convolution; dropped by XLA when x is the (constant) image.
  _, input_vjp = jax.vjp(lambda x_: lax.conv_general_dilated(
      x_, kernel, strides, pads, dimension_numbers=_DIMS), x)
  (grad_x,) = input_vjp(g)
  return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


class Conv(nn.Module):
  """Stride-1 SAME convolution with the parameters of `nn.Conv` (kernel HWIO, bias)."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  use_bias: bool = True
  impl: str = "auto"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    x = jnp.asarray(x, self.dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    pads = (_same_padding(self.kernel_size[0]), _same_padding(self.kernel_size[1]))
    if ops.use_cpu_kernels(self.impl, x):
      y = strided_conv(x, kernel, (1, 1), pads)
    else:
      y = lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMS)
    if self.use_bias:
      y = y + jnp.asarray(self.param("bias", nn.initializers.zeros, (self.features,)), self.dtype)
    return y


def max_pool_2x2(x, impl: str = "auto"):
  """2x2 max-pool, stride 2 (odd trailing rows/columns dropped, as nn.max_pool VALID)."""
  if not ops.use_cpu_kernels(impl, x):
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class Conv1x1(nn.Module):
  """Bias-free 1x1 convolution with `nn.Conv`'s kernel (1, 1, C_in, C_out), as a matmul on CPU.

  XLA:CPU runs a 1x1 `conv_general_dilated` ~6x slower forward and ~5x slower in its
  gradients than the same contraction written as an einsum (measured: 32x56x56x144
  -> 24 channels, 73 vs 11 ms forward, 345 vs 80 ms for both gradients).
  """
  features: int
  impl: str = "auto"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    x = jnp.asarray(x, self.dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    if ops.use_cpu_kernels(self.impl, x):
      return pointwise_matmul(x, kernel[0, 0])
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMS)


@jax.custom_vjp
def pointwise_matmul(x, kernel):
  """`x [..., C] @ kernel [C, D]` whose backward reads a materialised output gradient.

  Autodiff lets XLA:CPU fuse the whole upstream backward (BatchNorm, ReLU6) into a
  transposing copy of the output gradient for the kernel gradient; that fusion reads
  every operand strided (measured: 220 ms of a 2 s MobileNetV2 step for one 8->48
  layer at 112x112). A barrier keeps the gradient row-major, and both products
  contract it in place.
  """
  return jnp.einsum("...c,cd->...d", x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise_matmul(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
  x, kernel = residuals
  g = lax.optimization_barrier(g)
  grad_x = jnp.einsum("...d,cd->...c", g, kernel)
  grad_kernel = jnp.einsum("nc,nd->cd", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
  return grad_x, grad_kernel.astype(kernel.dtype)


pointwise_matmul.defvjp(_pointwise_fwd, _pointwise_bwd)


def _batch_stats(x32, axes):
  mean = jnp.mean(x32, axes)
  # As flax.linen.BatchNorm: biased variance E[x^2] - E[x]^2, clipped at 0.
  var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
  return mean, var


def _normalize(x32, mean, inv_std, scale, bias, relu6: bool):
  y = (x32 - mean) * (inv_std * scale) + bias
  return jnp.clip(y, 0.0, 6.0) if relu6 else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x, scale, bias, epsilon: float, relu6: bool):
  """Training-mode BatchNorm (+ ReLU6) over all but the last axis; returns (y, mean, var).

  The backward is the textbook one: two reductions over the incoming gradient and one
  elementwise pass, ~20% faster on XLA:CPU than autodiff through the statistics.
  """
  y, mean, var, _ = _batch_norm_train_fwd_values(x, scale, bias, epsilon, relu6)
  return y, mean, var


def _batch_norm_train_fwd_values(x, scale, bias, epsilon, relu6):
  x32 = x.astype(jnp.float32)
  mean, var = _batch_stats(x32, tuple(range(x.ndim - 1)))
  inv_std = lax.rsqrt(var + epsilon)
  y = _normalize(x32, mean, inv_std, scale, bias, relu6).astype(x.dtype)
  return y, mean, var, inv_std


def _batch_norm_train_fwd(x, scale, bias, epsilon, relu6):
  y, mean, var, inv_std = _batch_norm_train_fwd_values(x, scale, bias, epsilon, relu6)
  return (y, mean, var), (x, scale, bias, mean, inv_std)


def _batch_norm_train_bwd(epsilon, relu6, residuals, cotangents):
  del epsilon
  x, scale, bias, mean, inv_std = residuals
  g = cotangents[0].astype(jnp.float32)  # mean/var feed only the (non-differentiated) stats
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  x_hat = (x.astype(jnp.float32) - mean) * inv_std
  if relu6:
    pre = x_hat * scale + bias
    g = jnp.where((pre > 0.0) & (pre < 6.0), g, 0.0)
  grad_bias = jnp.sum(g, axes)
  grad_scale = jnp.sum(g * x_hat, axes)
  grad_x = (scale * inv_std / count) * (count * g - grad_bias - x_hat * grad_scale)
  return grad_x.astype(x.dtype), grad_scale.astype(scale.dtype), grad_bias.astype(bias.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


class BatchNormAct(nn.Module):
  """`flax.linen.BatchNorm` (same variables, statistics and update) with an optional ReLU6.

  Variables: params `scale`, `bias`; batch_stats `mean`, `var` (so checkpoints and
  Keras weights map as onto `nn.BatchNorm`). In training mode on CPU the
  normalisation and ReLU6 share one hand-written backward (`batch_norm_train`);
  elsewhere autodiff differentiates the same formula.
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  relu6: bool = False
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x = jnp.asarray(x, self.dtype)
    if self.use_running_average:
      inv_std = lax.rsqrt(ra_var.value + self.epsilon)
      return _normalize(x.astype(jnp.float32), ra_mean.value, inv_std, scale, bias,
                        self.relu6).astype(self.dtype)
    if ops.use_cpu_kernels(self.impl, x):
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.relu6)
    else:  # Autodiff through the same formula.
      y, mean, var, _ = _batch_norm_train_fwd_values(x, scale, bias, self.epsilon, self.relu6)
    if not self.is_initializing():
      mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
      ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    return y


class StridedConv(nn.Module):
  """Bias-free strided convolution with `nn.Conv`'s kernel; matmul kernel gradient on CPU.

  Meant for MobileNetV2's stem (3 -> 16 channels, stride 2), whose kernel gradient
  XLA:CPU computes slowly as a convolution. `in_features` fixes the kernel's input
  channels; a 1-channel input then stands for that image repeated in every channel
  (a gray X-ray as RGB), computed as one channel against the kernel summed over its
  inputs: the same function at a third of the cost.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"
  in_features: int | None = None
  impl: str = "auto"
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    in_features = self.in_features or x.shape[-1]
    if x.shape[-1] not in (1, in_features):
      raise ValueError(f"{self.name}: expected 1 or {in_features} input channels; "
                       f"got {x.shape[-1]}")
    kernel = self.param("kernel", self.kernel_init,
                        tuple(self.kernel_size) + (in_features, self.features), jnp.float32)
    if x.shape[-1] != in_features:
      kernel = jnp.sum(kernel, axis=2, keepdims=True)
    x = jnp.asarray(x, self.dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    strides = tuple(self.strides)
    pads = tuple(lax.padtype_to_pads(x.shape[1:3], self.kernel_size, strides, self.padding))
    if ops.use_cpu_kernels(self.impl, x):
      return strided_conv(x, kernel, strides, pads)
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMS)
