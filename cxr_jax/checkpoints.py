"""Orbax checkpoints of a workdir: the latest epoch (to resume) and the best one (to evaluate).

  workdir/checkpoints/latest/<epoch>/{state, meta}   full train state + loop bookkeeping
  workdir/checkpoints/best/<epoch>/{state, meta}     params + batch_stats + threshold, metrics
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def _manager(workdir: str, kind: str, create: bool) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints", kind)
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


class Checkpointer:
  """Writes the latest and the best checkpoint of a training run."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.latest = _manager(workdir, "latest", create=True)
    self.best = _manager(workdir, "best", create=True)

  def save_latest(self, epoch: int, state_dict: dict, meta: dict) -> None:
    self.latest.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_dict), meta=ocp.args.JsonSave(meta)), force=True)
    self.latest.wait_until_finished()

  def save_best(self, epoch: int, variables: dict, meta: dict) -> None:
    self.best.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)), force=True)
    self.best.wait_until_finished()

  def restore_latest(self, target_state_dict: dict) -> tuple[dict, dict] | None:
    """(state_dict, meta) of the latest checkpoint, shaped like the target; None if none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target_state_dict)
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def latest_meta(self) -> dict | None:
    """The loop bookkeeping of the latest checkpoint, without its arrays; None if none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_best(workdir: str) -> tuple[dict, dict]:
  """(variables, meta) of the best checkpoint of `workdir`, as host arrays."""
  manager = _manager(workdir, "best", create=False)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint under {os.path.join(workdir, 'checkpoints', 'best')}: train first "
        f"(python launch.py --config=... --workdir={workdir}).")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  manager.close()
  return jax.device_get(restored["state"]), restored["meta"]


def has_best(workdir: str) -> bool:
  best = os.path.join(workdir, "checkpoints", "best")
  return os.path.isdir(best) and any(e.isdigit() for e in os.listdir(best))
