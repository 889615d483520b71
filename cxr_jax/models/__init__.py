"""Models: ALL_MODELS, every model kind, Flax, scikit-learn and ensemble alike.

  models.get(name) -> ModelKind: what it is and what it supports (`kinds`; how it trains
                      and loads: `cxr_jax.registry`)
  models.create_model(config.model) -> flax.linen.Module        (Flax kinds)
  models.apply_with_features(model, variables, images01) -> (logits, feature grid)

Every Flax model takes float32 images in [0, 1], [B, H, W, C], returns one PNEUMONIA
logit per image, [B], and sows its last spatial feature map (("intermediates",
"feature_map"), [B, h, w, C]); `train` switches dropout and BatchNorm statistics. A new network is a
module here, its line in ALL_MODELS below, and a config in configs/ (docs/design.md).

Modules: `kinds` (the ModelKind protocol and the built-in kinds), `cnn` (the small CNNs),
`mobilenet_v2` (keras.applications.MobileNetV2 in Flax), `keras_weights` (its strict .h5
port), `mobilenet` (the classifier on it), `intensity` (its per-image standardisation),
`pca_logreg` (the scikit-learn baseline).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax import ops as ops_lib
from cxr_jax.models import cnn
from cxr_jax.models import mobilenet
from cxr_jax.models.kinds import EnsembleKind
from cxr_jax.models.kinds import FlaxKind
from cxr_jax.models.kinds import ModelKind
from cxr_jax.models.kinds import SklearnKind
from cxr_jax.models.kinds import Supports
from cxr_jax.models.kinds import Trained

def ops_impl(model_config) -> str:
  """The config's `cxr_jax.ops` policy."""
  return ops_lib.normalize(model_config.ops)


def create_model(model_config) -> nn.Module:
  """Builds the Flax module named by `model_config.name` from its config."""
  return get(model_config.name).create_module(model_config)


def param_count(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def load_pretrained(model: nn.Module, model_config, variables: dict) -> dict:
  """Initial variables with pretrained weights where the model's config asks for them."""
  loader = getattr(model, "load_pretrained", None)
  return loader(model_config, variables) if loader is not None else variables


FEATURE_GRID = 2  # The feature map is pooled to a FEATURE_GRID x FEATURE_GRID grid.


def grid_pool(fmap, grid: int = FEATURE_GRID):
  """[B, h, w, C] -> [B, grid * grid * C]: the mean of each cell of a grid x grid partition.

  Cells of odd sizes overlap by a row or column. Unlike a global average, where things
  are stays in the vector: a chest on its side is not pooled into a chest upright.
  """
  _, h, w, _ = fmap.shape
  cells = []
  for i in range(grid):
    rows = jax.lax.slice_in_dim(fmap, (i * h) // grid, -(-((i + 1) * h) // grid), axis=1)
    for j in range(grid):
      cell = jax.lax.slice_in_dim(rows, (j * w) // grid, -(-((j + 1) * w) // grid), axis=2)
      cells.append(jnp.mean(cell.astype(jnp.float32), axis=(1, 2)))
  return jnp.concatenate(cells, axis=-1)


def _feature_maps(state) -> list:
  """Every sown feature map, in a fixed order (the tree's sorted keys)."""
  return jax.tree_util.tree_leaves(state["intermediates"])


def apply_with_features(model: nn.Module, variables, images01, **kwargs):
  """(logits [B], every sown feature map grid-pooled and concatenated [B, D])."""
  logits, state = model.apply(variables, images01, train=False, mutable=["intermediates"],
                              **kwargs)
  return logits, jnp.concatenate([grid_pool(m) for m in _feature_maps(state)], axis=-1)


def feature_layout(model: nn.Module, variables, image_shape) -> list[int]:
  """The width of each feature map's block in `apply_with_features`' features."""
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  _, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]), variables, x)
  return [FEATURE_GRID * FEATURE_GRID * m.shape[-1] for m in _feature_maps(state)]


def _cnn_baseline(model_config):
  return cnn.CNNBaseline(conv_features=tuple(model_config.conv_features),
                         dense_features=tuple(model_config.dense_features),
                         ops=ops_impl(model_config))


def _cnn(model_config):
  return cnn.CNN(block_features=tuple(model_config.block_features),
                 convs_per_block=model_config.convs_per_block,
                 dense_features=model_config.dense_features,
                 dropout_rate=model_config.dropout_rate, ops=ops_impl(model_config))


def _mobilenet_v2(model_config):
  return mobilenet.MobileNetV2Classifier(
      alpha=model_config.alpha, dropout_rate=model_config.dropout_rate,
      ops=ops_impl(model_config), weights=model_config.weights,
      weights_size=model_config.weights_size,
      bn_momentum=model_config.bn_momentum,
      intensity=model_config.intensity)


ENSEMBLE = "ensemble"  # The kind the ensemble command makes (train.create_ensemble).

# Every model kind, by config.model.name.
ALL_MODELS: dict[str, ModelKind] = {
    "cnn_baseline": FlaxKind("cnn_baseline", _cnn_baseline),
    "cnn_v2": FlaxKind("cnn_v2", _cnn),
    "cnn_v3": FlaxKind("cnn_v3", _cnn),
    "mobilenet_v2": FlaxKind("mobilenet_v2", _mobilenet_v2),
    "pca_logreg": SklearnKind("pca_logreg"),
    ENSEMBLE: EnsembleKind(ENSEMBLE),
}


def names() -> list[str]:
  return sorted(ALL_MODELS)


def get(name: str) -> ModelKind:
  if name not in ALL_MODELS:
    raise ValueError(f"Unknown model {name!r} (config.model.name); known: {names()}.")
  return ALL_MODELS[name]
