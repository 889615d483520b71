"""Model registry and the small CNNs of the comparison.

Every Flax model takes images as float32 in [0, 1], shape [B, H, W, C], and returns
one logit per image, shape [B] (PNEUMONIA = positive class). `train` switches
dropout and BatchNorm statistics updates.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
      x = nn.relu(nn.Conv(features, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
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
      x = nn.Conv(self.features, (3, 3), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return nn.max_pool(x, (2, 2), strides=(2, 2))


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
