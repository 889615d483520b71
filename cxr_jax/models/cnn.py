"""The small CNNs of the comparison: the seed's baseline and a VGG-style CNN (cnn_v2/v3).

Every model takes float32 images in [0, 1], [B, H, W, C], returns one PNEUMONIA logit
per image, [B], and sows its spatial feature maps (several depths, the last one last)
as ("intermediates", "feature_map") for the out-of-distribution score
(`models.apply_with_features`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cxr_jax.ops import layers


class CNNBaseline(nn.Module):
  """The seed's baseline: reduced grayscale images, four hidden layers (2 conv, 2 dense)."""
  conv_features: Sequence[int] = (32, 64)
  dense_features: Sequence[int] = (128, 64)
  ops: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in self.conv_features:
      x = nn.relu(layers.Conv(features, (3, 3), impl=self.ops)(x))
      x = layers.max_pool_2x2(x, self.ops)
      self.sow("intermediates", "feature_map", x)
    x = x.reshape((x.shape[0], -1))
    for features in self.dense_features:
      x = nn.relu(nn.Dense(features)(x))
    return jnp.squeeze(nn.Dense(1, name="head")(x), axis=-1)


class ConvBlock(nn.Module):
  """`convs_per_block` x (3x3 conv -> BatchNorm -> ReLU), then 2x2 max-pool."""
  features: int
  convs_per_block: int = 2
  ops: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(self.convs_per_block):
      x = layers.Conv(self.features, (3, 3), use_bias=False, impl=self.ops)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return layers.max_pool_2x2(x, self.ops)


class CNN(nn.Module):
  """VGG-style CNN with BatchNorm, global average pooling and dropout (cnn_v2, cnn_v3)."""
  block_features: Sequence[int]
  convs_per_block: int = 2
  dense_features: int = 128
  dropout_rate: float = 0.3
  ops: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, features in enumerate(self.block_features):
      x = ConvBlock(features, self.convs_per_block, self.ops)(x, train)
      if i:  # Every block but the first (which sees little more than pixels).
        self.sow("intermediates", "feature_map", x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dense_features)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return jnp.squeeze(nn.Dense(1, name="head")(x), axis=-1)
