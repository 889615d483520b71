"""Data parallelism over all local devices with jax.sharding (global-view arrays).

The batch is split along its first axis over a 1-D mesh named "data"; the train
state is replicated. jit then partitions the step itself (GSPMD): gradients and
BatchNorm batch statistics are reduced over the whole global batch, so the result
equals a single-device step on the same batch. Multi-host: call
`jax.distributed.initialize()` first (see README.md); each process then feeds its
own slice of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "config.batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"{name}={batch_size} must be divisible by the {n} devices the batch "
                     "is split over.")


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Puts each array of the batch on the mesh, split along its first (batch) axis."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  # Every process holds the same global batch (same seeded order); each feeds its part.
  n, i = jax.process_count(), jax.process_index()
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.split(x, n)[i]), batch)


def to_host(tree):
  """Host numpy copies of (possibly sharded) arrays, gathered across processes if needed."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
