"""Batched inference of a Flax model over a decoded set (padded, masked last batch)."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from cxr_jax import augment
from cxr_jax import input_pipeline
from cxr_jax import sharding


def make_predict_fn(model) -> Callable:
  """A jitted fn(variables, uint8 images) -> PNEUMONIA probabilities, in inference mode."""

  @jax.jit
  def predict(variables, images):
    logits = model.apply(variables, augment.to_float(images), train=False)
    return jax.nn.sigmoid(logits)

  return predict


def predict_probs(predict_fn: Callable, variables, data: input_pipeline.DecodedSet,
                  batch_size: int, mesh=None) -> np.ndarray:
  """predict_fn's outputs (probabilities, or any per-image rows) for every image of `data`,
  in order; padding is masked out.

  With a `mesh` (sharding.data_mesh()), each batch is split over its devices.
  """
  outputs = []
  for batch in input_pipeline.eval_batches(data, batch_size):
    images = batch["image"]
    if mesh is not None:
      images = sharding.shard_batch({"image": images}, mesh)["image"]
    probs = predict_fn(variables, images)
    outputs.append((probs, batch["mask"]))
  # One transfer at the end instead of a device->host sync per batch.
  return np.concatenate([np.asarray(p)[m] for p, m in jax.device_get(outputs)])
