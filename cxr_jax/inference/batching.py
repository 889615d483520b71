"""Batched inference of a jitted function over uint8 images: padded, masked, one fetch."""

from __future__ import annotations

from typing import Callable

import numpy as np

from cxr_jax.runtime import progress
from cxr_jax import sharding
from cxr_jax.data import batches


def predict_batched(fn: Callable, variables, images: np.ndarray, batch_size: int,
                    mesh=None, desc: str | None = None):
  """fn(variables, uint8 batch) for every image, in order, padding masked out.

  fn returns an array or a tuple of arrays with the batch as first axis; so does this.
  With a `mesh` (sharding.data_mesh()), each batch is split over its devices.
  """
  if len(images) == 0:
    raise ValueError("No images to predict.")
  outputs = []
  batch_iter = batches.eval_batches(images, batch_size)
  if desc:
    batch_iter = progress.bar(batch_iter, -(-len(images) // batch_size), desc, unit="batch")
  for batch in batch_iter:
    x = batch["image"]
    if mesh is not None:
      x = sharding.shard_batch({"image": x}, mesh)["image"]
    outputs.append((fn(variables, x), batch["mask"]))
  # One transfer at the end instead of a device->host sync per batch.
  fetched = list(zip(sharding.to_host([out for out, _ in outputs]), [m for _, m in outputs]))
  if isinstance(fetched[0][0], tuple):
    return tuple(np.concatenate([np.asarray(out[k])[m] for out, m in fetched])
                 for k in range(len(fetched[0][0])))
  return np.concatenate([np.asarray(out)[m] for out, m in fetched])
