"""Depthwise 3x3 convolution in two interchangeable forms.

MobileNetV2 spends most of its (few) FLOPs in 1x1 convolutions, but on XLA:CPU its
depthwise 3x3 convolutions dominate the run time when written the textbook way
(`lax.conv_general_dilated` with `feature_group_count=C`): XLA:CPU has no fast
grouped-convolution kernel, and the weight gradient of a grouped convolution is
especially slow. The same op written as nine shifted multiply-adds is a handful of
fused elementwise loops and is much faster on CPU (`python -m cxr_lab.tools.bench
--depthwise`). On GPU/TPU the grouped convolution maps to cuDNN / the TPU
convolution unit and is the fast form.

`impl` (the policy of `cxr_jax.ops`):
  * "cpu": pad, then the sum of 9 strided slices of the padded input, each multiplied
    by one kernel tap (per channel). Its backward is written by hand: the input
    gradient as shifted multiply-adds over the padded output gradient (per output
    parity at stride 2), with input and gradient materialised first, which took a
    MobileNetV2 alpha 0.35 training step on 2 cores from ~1.45 s to ~0.95 s against
    autodiff's transpose (measured in one process, interleaved).
  * "xla": `lax.conv_general_dilated(..., feature_group_count=C)`.
  * "auto": "cpu" under jit on the CPU backend, "xla" otherwise.

Both forms compute the same function (up to float summation order), take the kernel
in Keras's `DepthwiseConv2D` layout (3, 3, C, 1) (depth multiplier 1) and so hold
interchangeable weights.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from cxr_jax import ops

Padding = Union[str, Sequence[Sequence[int]]]


def _explicit_padding(padding: Padding, size: int, stride: int) -> tuple[int, int]:
  """Padding of one spatial dim for a 3-tap kernel, TF/Keras semantics."""
  if isinstance(padding, str):
    p = padding.upper()
    if p == "VALID":
      return (0, 0)
    if p == "SAME":
      out = -(-size // stride)
      total = max((out - 1) * stride + 3 - size, 0)
      return (total // 2, total - total // 2)
    raise ValueError(f"padding must be 'SAME', 'VALID' or explicit pairs; got {padding!r}")
  raise TypeError("internal: explicit padding handled by caller")


def _normalize_padding(padding: Padding, h: int, w: int, stride: int):
  if isinstance(padding, str):
    return (_explicit_padding(padding, h, stride), _explicit_padding(padding, w, stride))
  (pt, pb), (pl, pr) = padding
  return ((int(pt), int(pb)), (int(pl), int(pr)))


def depthwise_conv3x3(
  x: jax.Array,
  kernel: jax.Array,
  stride: int = 1,
  padding: Padding = "SAME",
  impl: str = "auto",
) -> jax.Array:
  """Depthwise 3x3 convolution (depth multiplier 1), NHWC.

  Args:
    x: (B, H, W, C) input.
    kernel: (3, 3, C, 1) kernel (Keras `DepthwiseConv2D` layout).
    stride: 1 or 2 (same stride along both spatial dims).
    padding: "SAME" / "VALID" (TensorFlow semantics: SAME puts the odd pixel of
      padding at the bottom/right) or explicit ((top, bottom), (left, right)).
    impl: "cpu", "xla" or "auto" (see `cxr_jax.ops`).

  Returns:
    (B, H_out, W_out, C) with H_out = (H + top + bottom - 3) // stride + 1.
  """
  if stride not in (1, 2):
    raise ValueError(f"stride must be 1 or 2; got {stride}")
  b, h, w, c = x.shape
  if kernel.shape != (3, 3, c, 1):
    raise ValueError(f"kernel must have shape (3, 3, {c}, 1); got {kernel.shape}")
  (pt, pb), (pl, pr) = _normalize_padding(padding, h, w, stride)
  kernel = kernel.astype(x.dtype)
  if not ops.use_cpu_kernels(impl, x):
    return lax.conv_general_dilated(
        x, kernel.reshape(3, 3, 1, c), window_strides=(stride, stride),
        padding=((pt, pb), (pl, pr)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c)

  # CPU form: 9 strided slices of the padded input times per-channel taps.
  hp, wp = h + pt + pb, w + pl + pr
  if hp < 3 or wp < 3:
    raise ValueError(f"input {h}x{w} (padded {hp}x{wp}) is too small for a 3x3 kernel")
  return _shifted_depthwise(x, kernel[:, :, :, 0], stride, ((pt, pb), (pl, pr)))


def _tap(xp, i: int, j: int, stride: int, ho: int, wo: int):
  b, _, _, c = xp.shape
  return lax.slice(xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                     (1, stride, stride, 1))


def _shifted_forward(x, k, stride: int, pads, materialize: bool):
  """(output, padded input) of the 9-tap depthwise convolution; k is (3, 3, C)."""
  (pt, pb), (pl, pr) = pads
  # lax.pad: negative amounts crop, which the stride-1 input gradient uses.
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  if materialize:
    # For training: the backward slices the padded input nine more times, so compute
    # it and its producer (BatchNorm, ReLU6) once instead of inside every tap.
    # Inference is faster with the producer fused into the one output loop.
    xp = lax.optimization_barrier(xp)
  ho, wo = (xp.shape[1] - 3) // stride + 1, (xp.shape[2] - 3) // stride + 1
  out = None
  for i in range(3):
    for j in range(3):
      term = _tap(xp, i, j, stride, ho, wo) * k[i, j]
      out = term if out is None else out + term
  return out, xp


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_depthwise(x, k, stride: int, pads):
  return _shifted_forward(x, k, stride, pads, materialize=False)[0]


def _shifted_depthwise_fwd(x, k, stride, pads):
  out, xp = _shifted_forward(x, k, stride, pads, materialize=True)
  return out, (xp, k)


def _shifted_depthwise_bwd(stride, pads, residuals, g):
  """Kernel gradient: 9 reductions of tap * g. Input gradient: the transposed
  convolution as shifted multiply-adds over the materialised gradient (for stride 2
  per output parity), not autodiff's interior-padded slices, which XLA:CPU fuses
  into the upstream BatchNorm backward at ~8 ns per element."""
  xp, k = residuals
  (pt, pb), (pl, pr) = pads
  b, ho, wo, c = g.shape
  h, w = xp.shape[1] - pt - pb, xp.shape[2] - pl - pr
  g = lax.optimization_barrier(g)
  grad_k = jnp.stack([jnp.sum(_tap(xp, i, j, stride, ho, wo) * g, axis=(0, 1, 2))
            for i in range(3) for j in range(3)]).reshape(3, 3, c)
  if stride == 1:
    # grad_x[y, x] = sum_ij g[y + pt - i, x + pl - j] k[i, j] (g zero outside): the
    # same shifted sum with the kernel flipped, over g padded by 2 - pad.
    grad_x = _shifted_forward(g, k[::-1, ::-1], 1, ((2 - pt, 2 - pb), (2 - pl, 2 - pr)),
                                  materialize=True)[0]
  else:
    # Padded-input row u = 2m + r gets taps i = r (from g[m]) and, for r = 0, i = 2
    # (from g[m - 1]); likewise for columns. gq[m + 1] = g[m], zero at both ends.
    gq = lax.optimization_barrier(jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0))))
    rows = {0: ((0, 1), (2, 0)), 1: ((1, 1),)}  # parity -> ((tap, gq offset), ...)
    phases = []
    for r in (0, 1):
      row = []
      for s in (0, 1):
        acc = None
        for i, di in rows[r]:
          for j, dj in rows[s]:
            term = lax.slice(gq, (0, di, dj, 0), (b, di + ho + 1, dj + wo + 1, c)) * k[i, j]
            acc = term if acc is None else acc + term
        row.append(acc)
      phases.append(jnp.stack(row, axis=3))  # (b, ho+1, wo+1, 2, c)
    full = jnp.stack(phases, axis=2).reshape(b, 2 * (ho + 1), 2 * (wo + 1), c)
    grad_x = full[:, pt:pt + h, pl:pl + w, :]
  return grad_x.astype(xp.dtype), grad_k.astype(k.dtype)


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


class DepthwiseConv3x3(nn.Module):
  """Bias-free depthwise 3x3 convolution holding a Keras-shaped kernel.

  The parameter is named ``depthwise_kernel`` and has shape ``(3, 3, C, 1)`` like
  ``keras.layers.DepthwiseConv2D(kernel_size=3, use_bias=False)``, so Keras weights
  map onto it one to one.  Initialised like Keras (``glorot_uniform`` on that shape).
  """

  stride: int = 1
  padding: Padding = "SAME"
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.glorot_uniform()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("depthwise_kernel", self.kernel_init, (3, 3, c, 1), self.param_dtype)
    x = jnp.asarray(x, self.dtype)
    return depthwise_conv3x3(x, jnp.asarray(kernel, self.dtype), self.stride, self.padding, self.impl)
