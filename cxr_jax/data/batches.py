"""Batches of a `DecodedSet`: dicts with fixed keys and static shapes.

  train: {"image": uint8 [B,H,W,C], "label": int32 [B]}
  eval:  {"image": uint8 [B,H,W,C], "label": int32 [B], "mask": bool [B]}

Augmentation happens on the accelerator inside the jitted train step (`augment`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from cxr_jax.data.dataset import DecodedSet


def train_batches(data: DecodedSet, batch_size: int, seed: int, epoch: int
                  ) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of shuffled full batches (seeded by (seed, epoch): reshuffled every epoch).

  The last incomplete batch is dropped so that the train step compiles once; the
  images it held are in other batches in other epochs.
  """
  if len(data) < batch_size:
    raise ValueError(f"Training set has {len(data)} images, fewer than batch_size={batch_size}.")
  order = np.random.default_rng([seed, epoch]).permutation(len(data))
  for start in range(0, len(order) - batch_size + 1, batch_size):
    idx = np.sort(order[start:start + batch_size])  # Sorted gathers are cache-friendlier.
    yield {"image": data.images[idx], "label": data.labels[idx]}


def pad_batch(images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(images zero-padded to batch_size, mask of the real ones)."""
  n = len(images)
  mask = np.zeros(batch_size, bool)
  mask[:n] = True
  if n < batch_size:
    images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:],
                                              images.dtype)])
  return images, mask


def eval_batches(images: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every image exactly once; the last batch is zero-padded and masked."""
  for start in range(0, len(images), batch_size):
    batch, mask = pad_batch(images[start:start + batch_size], batch_size)
    yield {"image": batch, "mask": mask}
