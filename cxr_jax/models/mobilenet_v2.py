"""Flax port of `keras.applications.MobileNetV2` (Keras 3), layer for layer.

The module computes the same function as
`keras.applications.MobileNetV2(input_shape, alpha, include_top, weights=None,
pooling, classes)` and names every parameterised layer exactly as Keras does, as
flat top-level Flax modules (`Conv1`, `bn_Conv1`, `expanded_conv_depthwise`, ...,
`block_16_project_BN`, `Conv_1`, `Conv_1_bn`, `predictions`), so Keras .h5 weights
map one to one (`cxr_jax.models.keras_weights.port_mobilenet_v2`).

Differences from Keras, on purpose:
  * With `include_top=True` the module returns the LOGITS of `predictions`; Keras
    applies softmax there (use `jax.nn.softmax` to get Keras's output).
  * Inputs are NHWC floats already preprocessed like
    `keras.applications.mobilenet_v2.preprocess_input` (`x / 127.5 - 1`). A
    1-channel input is a gray image standing for the same values in all three
    channels (the stem sums its kernel over them: same function, a third of the cost).

Keras details reproduced (keras/src/applications/mobilenet_v2.py, imagenet_utils.py):
  * channel counts: `_make_divisible(32 * alpha, 8)` for the stem,
    `_make_divisible(int(filters * alpha), 8)` for each block's projection, the
    expansion is `6 * in_channels` (not rounded), and the last 1x1 conv has 1280
    channels unless `alpha > 1.0`, then `_make_divisible(1280 * alpha, 8)`;
  * stride-2 depthwise layers are preceded by `ZeroPadding2D(correct_pad(x, 3))`,
    i.e. (size % 2, 1) per spatial dim -- (0, 1) for even sizes, (1, 1) for odd
    ones, rows and columns separately -- then a VALID convolution (this equals TF's 'SAME' for a 3x3
    kernel at stride 2, but we write it the way Keras does);
  * `Conv1` is a 3x3 stride-2 'same' convolution (TF semantics: the odd pixel of
    padding goes bottom/right, which is also what lax 'SAME' does);
  * BatchNormalization(epsilon=1e-3, momentum=0.999), ReLU6, residual add when
    `stride == 1` and the input and output channel counts agree.

Every layer follows the `cxr_jax.ops` policy (`ops`: "auto", "xla" or "cpu"):
depthwise convolutions (`ops.depthwise.DepthwiseConv3x3`) are nine shifted
multiply-adds under jit on CPU and the grouped convolution on GPU/TPU (and in
eager, un-jitted calls, where the shifted form would compile ~30 tiny ops per
layer). Both give the same outputs to float rounding (relative difference ~1e-5 or
less). Jitted, alpha=1.0, batch 8 at 224x224, 2-core CPU: forward 256 ms shifted vs
1208 ms grouped; forward+backward in train mode 2.4 s vs 8.0 s (compile ~4 s / ~27 s
either way).

Initialising: `init` draws ~100 differently shaped random tensors and XLA:CPU
compiles each initialiser (~0.5 s each, ~40 s for the net on 2 cores, jitted or
not). To load Keras weights, use `jax.eval_shape(model.init, key, x)` as the
template of `cxr_jax.models.keras_weights.port_mobilenet_v2` (it reads only shapes and
dtypes; ~1 s), and initialise only what is not loaded (e.g. a new head).

`train=True` normalises with batch statistics and updates `batch_stats`
(call `apply(..., train=True, mutable=['batch_stats'])`).

CPU training speed (`python -m cxr_lab.tools.bench`): besides the depthwise form, the 1x1
convolutions are matrix products whose backward reads a materialised gradient
(`layers.Conv1x1`), BatchNorm and ReLU6 share one hand-written backward
(`layers.BatchNormAct`), and the stem's kernel gradient is a patches matrix product
(`layers.StridedConv`); each is the plain XLA op on GPU/TPU.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from cxr_jax.ops.depthwise import DepthwiseConv3x3
from cxr_jax.ops.layers import BatchNormAct, Conv1x1, StridedConv

# Blocks whose outputs are sown as ("intermediates", "feature_map"): the ends of the
# 1/8 and 1/16 stages, less specialised by fine-tuning than the last map.
FEATURE_MAP_BLOCKS = (5, 12)
# Keras's ImageNet weights exist for these widths (any alpha > 0 builds).
KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MIN_SIZE = 32  # Keras refuses inputs smaller than 32x32.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.999

# (filters, stride, expansion) of the 17 inverted residual blocks, in Keras order.
INVERTED_RESIDUAL_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)


def _make_divisible(v, divisor: int = 8, min_value: int | None = None) -> int:
  """Keras's channel rounding (copied from keras/src/applications/mobilenet_v2.py)."""
  if min_value is None:
    min_value = divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  # Make sure that rounding down does not go down by more than 10%.
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def first_block_filters(alpha: float) -> int:
  return _make_divisible(32 * alpha, 8)


def last_block_filters(alpha: float) -> int:
  """Channels of `Conv_1`: 1280, widened only for alpha > 1.0 (as Keras)."""
  return _make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280


def feature_dim(alpha: float) -> int:
  """Size of the pooled feature vector (include_top=False, pooling='avg'/'max')."""
  return last_block_filters(alpha)


def correct_pad(size: tuple[int, int], kernel_size: int = 3) -> tuple[tuple[int, int], tuple[int, int]]:
  """`keras.src.applications.imagenet_utils.correct_pad` for an (H, W) input."""
  adjust = (1 - size[0] % 2, 1 - size[1] % 2)
  correct = kernel_size // 2
  return ((correct - adjust[0], correct), (correct - adjust[1], correct))


def block_prefix(block_id: int) -> str:
  return "expanded_conv_" if block_id == 0 else f"block_{block_id}_"


def block_layer_names(include_top: bool = False) -> list[list[str]]:
  """Parameterised layer names grouped into blocks, input to output.

  Groups: the stem `[Conv1, bn_Conv1]`, the 17 inverted residual blocks
  (`expanded_conv_*`, `block_1_*` ... `block_16_*`), the last conv
  `[Conv_1, Conv_1_bn]`, and with `include_top` the classifier `[predictions]`.
  The names are the same for every alpha. These are the top-level keys of
  `variables['params']` (and of `variables['batch_stats']` for the BN layers).
  """
  groups = [["Conv1", "bn_Conv1"]]
  for block_id in range(len(INVERTED_RESIDUAL_BLOCKS)):
    p = block_prefix(block_id)
    expand = [f"{p}expand", f"{p}expand_BN"] if block_id else []
    groups.append(expand + [f"{p}depthwise", f"{p}depthwise_BN", f"{p}project", f"{p}project_BN"])
  groups.append(["Conv_1", "Conv_1_bn"])
  if include_top:
    groups.append(["predictions"])
  return groups


def last_blocks_layer_names(n: int, include_top: bool = False) -> list[str]:
  """Layer names of the last `n` groups of `block_layer_names` (n=0: none).

  For "freeze all but the last n blocks": train the layers returned here (plus
  any head of your own), freeze the rest.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0; got {n}")
  groups = block_layer_names(include_top)
  return [name for group in groups[len(groups) - min(n, len(groups)):] for name in group]


class MobileNetV2(nn.Module):
  """keras.applications.MobileNetV2 in Flax; see the module docstring.

  Returns logits `[B, classes]` with `include_top`, else the last feature map
  `[B, h, w, C]` (`pooling=None`) or pooled features `[B, C]` ('avg' / 'max'),
  with `C = feature_dim(alpha)`.
  """
  alpha: float = 1.0
  include_top: bool = True
  classes: int = 1000
  pooling: str | None = None
  ops: str = "auto"  # The cxr_jax.ops policy of every layer.
  bn_momentum: float = BN_MOMENTUM
  dtype: Any = jnp.float32
  # Keras's glorot_uniform. A caller that overwrites every weight from a file can pass
  # zeros: random initialisers cost ~0.6 s of XLA compile per shape on 2 CPU cores.
  kernel_init: Any = nn.initializers.glorot_uniform()

  def _impl(self) -> str:
    # init's output is thrown away and only the parameters' shapes matter: the one-op
    # XLA forms compile fastest there.
    return "xla" if self.is_initializing() else self.ops

  def _bn(self, name: str, train: bool, relu6: bool = True):
    return BatchNormAct(use_running_average=not train, momentum=self.bn_momentum,
                        epsilon=BN_EPSILON, relu6=relu6, impl=self._impl(), dtype=self.dtype,
                        name=name)

  def _conv1x1(self, features: int, name: str):
    # Keras initialises kernels with glorot_uniform; only matters for layers not loaded.
    return Conv1x1(features, impl=self._impl(), dtype=self.dtype, kernel_init=self.kernel_init,
                   name=name)

  def _inverted_res_block(self, x, filters: int, stride: int, expansion: int,
                          block_id: int, train: bool):
    inputs = x
    in_channels = x.shape[-1]
    pointwise_filters = _make_divisible(int(filters * self.alpha), 8)
    prefix = block_prefix(block_id)
    if block_id:
      x = self._conv1x1(expansion * in_channels, f"{prefix}expand")(x)
      x = self._bn(f"{prefix}expand_BN", train)(x)
    if stride == 2:
      padding = correct_pad(x.shape[1:3], 3)
    else:
      padding = ((1, 1), (1, 1))  # Keras 'same' for a 3x3 kernel at stride 1
    x = DepthwiseConv3x3(stride=stride, padding=padding, impl=self._impl(),
                         dtype=self.dtype, kernel_init=self.kernel_init,
                         name=f"{prefix}depthwise")(x)
    x = self._bn(f"{prefix}depthwise_BN", train)(x)
    x = self._conv1x1(pointwise_filters, f"{prefix}project")(x)
    x = self._bn(f"{prefix}project_BN", train, relu6=False)(x)  # linear bottleneck
    if in_channels == pointwise_filters and stride == 1:
      x = inputs + x
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"MobileNetV2 expects NHWC input; got shape {x.shape}")
    if min(x.shape[1], x.shape[2]) < MIN_SIZE:
      raise ValueError(f"MobileNetV2 (as Keras) needs inputs of at least {MIN_SIZE}x{MIN_SIZE}; "
                       f"got {x.shape[1]}x{x.shape[2]}")
    if self.pooling not in (None, "avg", "max"):
      raise ValueError(f"pooling must be None, 'avg' or 'max'; got {self.pooling!r}")
    x = jnp.asarray(x, self.dtype)

    x = StridedConv(first_block_filters(self.alpha), (3, 3), strides=(2, 2), padding="SAME",
                    in_features=3, impl=self._impl(), dtype=self.dtype, kernel_init=self.kernel_init,
                    name="Conv1")(x)
    x = self._bn("bn_Conv1", train)(x)
    for block_id, (filters, stride, expansion) in enumerate(INVERTED_RESIDUAL_BLOCKS):
      x = self._inverted_res_block(x, filters, stride, expansion, block_id, train)
      if block_id in FEATURE_MAP_BLOCKS:  # Mid-level maps for the OOD score (cost: none).
        self.sow("intermediates", "feature_map", x)
    x = self._conv1x1(last_block_filters(self.alpha), "Conv_1")(x)
    x = self._bn("Conv_1_bn", train)(x)

    if self.include_top:
      x = jnp.mean(x, axis=(1, 2))
      # Logits: Keras's `predictions` layer applies softmax on top of this.
      return nn.Dense(self.classes, dtype=self.dtype,
                      kernel_init=self.kernel_init, name="predictions")(x)
    if self.pooling == "avg":
      return jnp.mean(x, axis=(1, 2))
    if self.pooling == "max":
      return jnp.max(x, axis=(1, 2))
    return x
