"""Model registry and the small CNNs of the comparison.

Every Flax model takes images as float32 in [0, 1], shape [B, H, W, C], and returns
one logit per image, shape [B] (PNEUMONIA = positive class). `train` switches
dropout and BatchNorm statistics updates.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax import layers

_REGISTRY: dict[str, Callable] = {}

# Models that are not Flax modules but go through the same launch/evaluate commands.
SKLEARN_MODELS = ("pca_logreg",)


def register(name: str):
  def wrap(factory):
    _REGISTRY[name] = factory
    return factory
  return wrap


def names() -> list[str]:
  return sorted(list(_REGISTRY) + list(SKLEARN_MODELS))


def create_model(model_config) -> nn.Module:
  """Builds the Flax module named by `model_config.name` from its config."""
  name = model_config.name
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r} (config.model.name); known: {names()}. "
                     + ("It is not a Flax model." if name in SKLEARN_MODELS else ""))
  return _REGISTRY[name](model_config)


def param_count(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def load_pretrained(model: nn.Module, model_config, variables: dict) -> dict:
  """Initial variables with pretrained weights where the model's config asks for them."""
  loader = getattr(model, "load_pretrained", None)
  return loader(model_config, variables) if loader is not None else variables


class CNNBaseline(nn.Module):
  """The seed's baseline: reduced grayscale images, four hidden layers (2 conv, 2 dense)."""
  conv_features: Sequence[int] = (32, 64)
  dense_features: Sequence[int] = (128, 64)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in self.conv_features:
      x = nn.relu(layers.Conv(features, (3, 3))(x))
      x = layers.max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    for features in self.dense_features:
      x = nn.relu(nn.Dense(features)(x))
    return nn.Dense(1, name="head")(x)[:, 0]


class ConvBlock(nn.Module):
  """`convs_per_block` x (3x3 conv -> BatchNorm -> ReLU), then 2x2 max-pool."""
  features: int
  convs_per_block: int = 2

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(self.convs_per_block):
      x = layers.Conv(self.features, (3, 3), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return layers.max_pool_2x2(x)


class CNN(nn.Module):
  """VGG-style CNN with BatchNorm, global average pooling and dropout (cnn_v2, cnn_v3)."""
  block_features: Sequence[int]
  convs_per_block: int = 2
  dense_features: int = 128
  dropout_rate: float = 0.3

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in self.block_features:
      x = ConvBlock(features, self.convs_per_block)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense_features)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(1, name="head")(x)[:, 0]


@register("cnn_baseline")
def _cnn_baseline(model_config):
  return CNNBaseline(conv_features=tuple(model_config.conv_features),
                     dense_features=tuple(model_config.dense_features))


@register("cnn_v2")
@register("cnn_v3")
def _cnn(model_config):
  return CNN(block_features=tuple(model_config.block_features),
             convs_per_block=model_config.convs_per_block,
             dense_features=model_config.dense_features,
             dropout_rate=model_config.dropout_rate)


class MobileNetV2Classifier(nn.Module):
  """MobileNetV2 backbone (Keras layer names, ImageNet weights) + a new PNEUMONIA head.

  X-rays arrive as [B,H,W,1] in [0, 1]; they are mapped to Keras's
  `preprocess_input` range [-1, 1]; the gray channel stands for the three equal
  channels the ImageNet filters expect (an RGB input is used as it is).
  `train_batch_norm=False` keeps BatchNorm in inference mode while dropout trains:
  the usual transfer-learning setting (Keras's `base_model(x, training=False)`).
  """
  alpha: float = 0.35
  dropout_rate: float = 0.2
  depthwise_impl: str = "auto"
  weights: str = "imagenet"  # "imagenet" (Keras's file, found by name), a .h5 path, or "none".
  weights_size: int = 224  # Which Keras file (they exist for 96..224) when searched by name.
  dtype: Any = jnp.float32  # Backbone compute dtype (bfloat16 on accelerators); params stay fp32.
  gradcam_layer = "backbone/Conv_1_bn"  # The last 7x7 feature map, before ReLU6.

  def setup(self):
    from cxr_jax import mobilenet_v2  # pylint: disable=g-import-not-at-top
    # Pretrained backbones are overwritten whole (strictly) by load_pretrained, so their
    # initialiser can be the one that compiles fastest.
    kernel_init = (nn.initializers.glorot_uniform() if self.weights == "none"
                   else nn.initializers.zeros)
    self.backbone = mobilenet_v2.MobileNetV2(alpha=self.alpha, include_top=False,
                                             pooling="avg", depthwise_impl=self.depthwise_impl,
                                             kernel_init=kernel_init, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.head = nn.Dense(1)

  def features(self, x, train_batch_norm: bool = False):
    """Pooled backbone features [B, C] of [0, 1] images."""
    # A gray [B,H,W,1] image goes in as it is: the backbone's stem treats one channel
    # as the same image in all three (cheaper than repeating it).
    return self.backbone(x * 2.0 - 1.0, train=train_batch_norm)

  def classify(self, features, train: bool = False):
    """The head alone: logits [B] from pooled features (cached-feature training)."""
    features = jnp.asarray(features, jnp.float32)  # The head and the loss stay in fp32.
    return self.head(self.dropout(features, deterministic=not train))[:, 0]

  def __call__(self, x, train: bool = False, train_batch_norm: bool | None = None):
    bn_train = train if train_batch_norm is None else train_batch_norm
    return self.classify(self.features(x, bn_train), train)

  def fine_tune_prefixes(self, n_blocks: int) -> list[str]:
    """Top-level parameter names trained when fine-tuning the last n_blocks (and the head)."""
    from cxr_jax import mobilenet_v2  # pylint: disable=g-import-not-at-top
    return ["head"] + mobilenet_v2.last_blocks_layer_names(n_blocks)

  def load_pretrained(self, model_config, variables: dict) -> dict:
    """ImageNet weights from a Keras .h5 file into the backbone; strict, head left new."""
    from cxr_jax import keras_weights  # pylint: disable=g-import-not-at-top
    if self.weights == "none":
      logging.warning("MobileNetV2 starts from random weights (config.model.weights='none').")
      return variables
    if self.weights != "imagenet":
      path = keras_weights.find_keras_weights(self.alpha, self.weights_size, path=self.weights)
    else:
      try:
        path = keras_weights.find_keras_weights(self.alpha, self.weights_size, include_top=False)
      except FileNotFoundError as no_top_missing:
        try:  # Keras's with-top file holds the same backbone.
          path = keras_weights.find_keras_weights(self.alpha, self.weights_size, include_top=True)
        except FileNotFoundError:
          raise no_top_missing from None
    logging.info("Loading ImageNet weights into the MobileNetV2 backbone from %s", path)
    # A with-top file also fits: its 1000-class top is not used by this model.
    return keras_weights.port_mobilenet_v2(path, variables, exclude=("predictions",),
                                           scope="backbone")


@register("mobilenet_v2")
def _mobilenet_v2(model_config):
  return MobileNetV2Classifier(alpha=model_config.alpha, dropout_rate=model_config.dropout_rate,
                               depthwise_impl=model_config.depthwise_impl,
                               weights=model_config.weights,
                               weights_size=model_config.weights_size)
