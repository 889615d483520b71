"""What the phases of a Flax run are made of: the phases themselves, the initial weights,
the validation pass that picks epochs, and the frozen backbone's cached features."""

from __future__ import annotations

import dataclasses
import logging
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax.data import augment
from cxr_jax.inference import batching
from cxr_jax.metrics import classification as metrics_lib
from cxr_jax.models import batch_norm


class NonFiniteLossError(FloatingPointError):
  """The training loss or the validation predictions became NaN or inf."""


def get_phases(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The config's training phases; a single 'train' phase of all parameters by default.

  A phase may leave out `cached_features` (train on images, not on cached features)."""
  if "phases" in config:
    return [ml_collections.ConfigDict({"cached_features": False, **p}) for p in config.phases]
  return [ml_collections.ConfigDict(dict(
      name="train", num_epochs=config.num_epochs, learning_rate=config.learning_rate,
      trainable="all", train_batch_norm=True, cached_features=False))]


# Training images whose BatchNorm inputs `config.model.refit_batch_norm` measures.
REFIT_IMAGES = 512


def initial_variables(model, config, train_images: np.ndarray) -> dict:
  """The model's initial variables: its init at config.seed, pretrained weights where the
  config asks for them, then (refit_batch_norm) BatchNorm statistics of training images."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, _ = jax.random.split(rng)
  sample = jnp.zeros((1,) + train_images.shape[1:], jnp.float32)
  variables = jax.jit(lambda r, x: model.init(r, x, train=False))(init_rng, sample)
  variables = flax.core.unfreeze(variables)
  variables.pop("intermediates", None)
  variables = models.load_pretrained(model, config.model, variables)
  if config.model.refit_batch_norm:
    every = max(1, len(train_images) // REFIT_IMAGES)
    images = augment.to_float(train_images[::every][:REFIT_IMAGES])
    variables = batch_norm.refit(model, variables, np.asarray(images), config.eval_batch_size)
    logging.info("BatchNorm statistics measured on %d training images (function kept).",
                 len(images))
  return variables


# ---------------------------------------------------------------------------
# Evaluation during training.


def evaluate_split(predict_fn, variables, data, batch_size: int, mesh=None
                   ) -> tuple[dict, np.ndarray]:
  probs = batching.predict_batched(predict_fn, variables, data.images, batch_size, mesh)
  if not np.all(np.isfinite(probs)):
    raise NonFiniteLossError("Validation predictions became NaN or inf")
  return metrics_lib.validation_metrics(data.labels, probs), probs


def selection_value(metric: str, val_metrics: dict) -> float:
  """The validation number the best epoch maximises (log loss is negated)."""
  if metric == "loss":
    return -val_metrics["loss"]
  if metric == "auc":
    return val_metrics["roc_auc"] if val_metrics["roc_auc"] is not None else -1.0
  return val_metrics["f1"]


def make_features_fn(model):
  """features_fn(variables, uint8 images) -> pooled backbone features, jitted."""
  return jax.jit(lambda v, images: model.apply(v, augment.to_float(images),
                                               method=model.features))


def make_head_predict_fn(model):
  @jax.jit
  def predict(variables, features):
    return jax.nn.sigmoid(model.apply({"params": variables["params"]}, features,
                                      method=model.classify))
  return predict


def cached_features(model, variables, train_data, val_data, batch_size: int, mesh=None
                    ) -> tuple[data_lib.DecodedSet, data_lib.DecodedSet, float]:
  """Train/val sets whose "images" are the frozen backbone's pooled features, and seconds.

  Valid only while nothing below the head trains and BatchNorm is frozen; the training
  images are then seen without augmentation (the price of computing the backbone once
  instead of every epoch).
  """
  features_fn = make_features_fn(model)
  start = time.time()
  out = [dataclasses.replace(d, images=batching.predict_batched(
      features_fn, variables, d.images, batch_size, mesh, desc=f"caching {name} features"))
         for d, name in ((train_data, "train"), (val_data, "validation"))]
  seconds = time.time() - start
  logging.info("Cached backbone features of %d train + %d validation images (%d-d) in %.1fs; "
               "the head trains on them without augmentation.", len(train_data),
               len(val_data), out[0].images.shape[1], seconds)
  return out[0], out[1], seconds
