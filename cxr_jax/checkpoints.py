"""Orbax checkpoints of a workdir: one resume point per epoch, written atomically.

  workdir/checkpoints/run/<epoch>/state   the full train state of the running phase
                                  /best    params + batch_stats of the best epoch so far
                                  /meta    loop bookkeeping (phase, epoch, history, best record)

Each epoch's three items are one Orbax step, committed at once (written to a
temporary folder, then renamed), so a stop at any moment leaves either the previous
epoch or this one, never a state without its best model. The two newest epochs are
kept: a resume point that cannot be read is moved aside (`corrupt-<epoch>`, never
deleted) and the run resumes from the one before it. Workdirs written before this
layout (`checkpoints/best/<epoch>`) still evaluate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time

import jax
import orbax.checkpoint as ocp

from cxr_jax.runtime import stderr_redirect

RUN_DIR = "run"
LEGACY_BEST_DIR = "best"


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read."""


def _root(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _manager(directory: str, create: bool, max_to_keep: int = 2) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, options=options)


def _finalized_steps(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return sorted(int(e) for e in os.listdir(directory) if e.isdigit())


class RunCheckpoints:
  """The resume points of one training run (see the module docstring)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.directory = os.path.join(_root(workdir), RUN_DIR)
    self._manager = _manager(self.directory, create=True)

  def save(self, epoch: int, state_dict: dict, best_variables: dict, meta: dict) -> None:
    if epoch in self._manager.all_steps():  # Re-done after resuming from an older epoch.
      self._set_aside(epoch, "superseded")
    with _writes_output_to_log():
      self._manager.save(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state_dict), best=ocp.args.StandardSave(best_variables),
          meta=ocp.args.JsonSave(meta)), force=True)
      self._manager.wait_until_finished()

  def _set_aside(self, step: int, why: str) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(_root(self.workdir), f"{why}-{step}")
    if os.path.exists(dst):
      shutil.rmtree(dst)
    shutil.move(src, dst)
    self._manager.reload()

  def restore_latest(self) -> tuple[dict, dict, dict] | None:
    """(state_dict, best_variables, meta) of the newest readable epoch; None if none.

    An unreadable newest epoch is moved aside (logged) and the one before it is used.
    """
    for step in reversed(self._manager.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), best=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore()))
        return restored["state"], restored["best"], restored["meta"]
      except Exception as e:  # pylint: disable=broad-except  # Orbax raises many kinds.
        logging.warning("Checkpoint %s/%d is unreadable (%s: %s); moved aside to "
                        "checkpoints/corrupt-%d, resuming from the epoch before it.",
                        self.directory, step, type(e).__name__, str(e)[:200], step)
        self._set_aside(step, "corrupt")
    return None

  def close(self) -> None:
    self._manager.close()


@contextlib.contextmanager
def _writes_output_to_log(settle_seconds: float = 1.0):
  """fd 2 into the log while a checkpoint is written.

  When one array cannot be written (a full disk), tensorstore's other writes still run,
  and their callbacks print "Event loop is closed" tracebacks from Orbax's closed event
  loop, before and after the save raises: noise over the one-line error the caller
  gives. After a failure this waits `settle_seconds` for them. Output of a save that
  succeeded is logged as a warning, so nothing is lost.
  """
  captured, failed = stderr_redirect.CapturedStderr(), False
  try:
    with captured:
      try:
        yield
      except Exception:
        failed = True
        time.sleep(settle_seconds)
        raise
  finally:
    if captured.text:
      (logging.debug if failed else logging.warning)(
          "Output while writing a checkpoint%s:\n%s", " that failed" if failed else "",
          captured.text)


def _settle_failed_reads(seconds: float = 1.0) -> None:
  """Lets the reads still in flight after a failed restore end, their output to the log.

  When one array of a step cannot be read, Orbax raises while tensorstore's other reads
  are still running; their callbacks then find Orbax's event loop closed and print
  "Event loop is closed" tracebacks over the one-line error the user should see.
  """
  with stderr_redirect.CapturedStderr() as captured:
    time.sleep(seconds)
  if captured.text:
    logging.debug("Output of reads that outlived a failed restore:\n%s", captured.text)


def _restore_step(directory: str, step: int, items: dict) -> dict:
  manager = _manager(directory, create=False)
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    _settle_failed_reads()
    raise CheckpointError(
        f"Checkpoint {directory}/{step} is unreadable ({type(e).__name__}: {str(e)[:200]}). "
        "Re-run the training command: it resumes from the epoch before it.") from None
  finally:
    manager.close()


def restore_best(workdir: str) -> tuple[dict, dict]:
  """(variables, best-epoch record) of the best model of `workdir`, as host arrays."""
  run_dir = os.path.join(_root(workdir), RUN_DIR)
  steps = _finalized_steps(run_dir)
  if steps:
    restored = _restore_step(run_dir, steps[-1], {"best": ocp.args.StandardRestore(),
                                                  "meta": ocp.args.JsonRestore()})
    return jax.device_get(restored["best"]), restored["meta"]["best"]
  legacy_dir = os.path.join(_root(workdir), LEGACY_BEST_DIR)
  steps = _finalized_steps(legacy_dir)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint under {_root(workdir)}: train first "
        f"(python launch.py --config=... --workdir={workdir}).")
  restored = _restore_step(legacy_dir, steps[-1], {"state": ocp.args.StandardRestore(),
                                                   "meta": ocp.args.JsonRestore()})
  return jax.device_get(restored["state"]), restored["meta"]


def compact(workdir: str) -> int:
  """Drops what only resuming needs (older epochs, the optimizer state); returns bytes freed.

  For shipping a finished workdir: it still evaluates, predicts and exports, but a
  training command on it starts its phases over.
  """
  run_dir = os.path.join(_root(workdir), RUN_DIR)
  steps = _finalized_steps(run_dir)
  doomed = [os.path.join(run_dir, str(s)) for s in steps[:-1]]
  if steps:
    doomed.append(os.path.join(run_dir, str(steps[-1]), "state"))
  freed = 0
  for path in doomed:
    if os.path.exists(path):
      freed += sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
                   for f in files)
      shutil.rmtree(path)
  return freed


def has_best(workdir: str) -> bool:
  return bool(_finalized_steps(os.path.join(_root(workdir), RUN_DIR))
              or _finalized_steps(os.path.join(_root(workdir), LEGACY_BEST_DIR)))
