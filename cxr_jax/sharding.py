"""Data parallelism over every device of every process, with jax.sharding (global arrays).

The batch is split along its first axis over a 1-D mesh named "data" that spans all
devices of all processes; the train state is replicated. jit partitions the step itself
(GSPMD): gradients and BatchNorm batch statistics are reduced over the whole global
batch, so the result equals a single-device step on the same batch. With several
processes (`initialize_distributed`), every process holds the same data and the same
seeded batch order and feeds its own slice of each global batch; predictions are
gathered back to every process, so every process takes the same decisions.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Environment variables read when the command line names no coordinator.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """jax.distributed.initialize with explicit settings, the environment's, or auto-detection.

  Explicit values (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) are
  passed on; with none, JAX detects the cluster (SLURM, Open MPI, TPU pods, ...). On CPU,
  cross-process collectives use gloo.
  """
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  if coordinator and (num_processes is None or process_id is None):
    raise ValueError(f"With a coordinator ({coordinator}) give the number of processes and "
                     f"this process's id too (--num_processes/--process_id, or "
                     f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}).")
  # Cross-process collectives between CPU devices (GPUs use NCCL whatever this says).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id)
  logging.info("Process %d of %d; %d devices in all (%d here).", jax.process_index(),
               jax.process_count(), jax.device_count(), jax.local_device_count())


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

  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree_util.tree_map(gather, tree)


def replicate(tree, mesh: Mesh):
  """The same value on every device of the mesh (every process passes the same tree)."""
  sharding = NamedSharding(mesh, PartitionSpec())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree_util.tree_map(put, tree)
