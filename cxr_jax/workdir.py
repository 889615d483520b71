"""A training workdir: what each file is, whether training finished, atomic JSON writes.

  workdir/config.json          the config it was trained with (rebuilds everything)
  workdir/checkpoints/         Orbax checkpoints (`checkpoints`)
  workdir/history.json         one record per epoch
  workdir/train_summary.json   written when training finishes
  workdir/calibration.json     temperature and operating points fitted on validation
  workdir/ood.npz, shift.npz   the OOD detector and the folder-shift reference (`evaluation.fit`)
  workdir/tensorboard/         TensorBoard summaries
  workdir/writer.lock          the one-writer lock (`writer_lock`): who writes here now

One writer per workdir: every command that writes into a workdir (training, a sweep's
runs and root, ensemble creation, evaluate and the report writing there, export) holds
`writer_lock`, an flock of writer.lock (the `filelock` package) whose content names the
holder. A second writer is refused before any work, naming the holder; a lock left by a
killed process (the kernel released its flock) is taken over with a log line. Readers
(predict, serve) never take it.

Over 350 lines because everything a workdir's files mean is here, the one-writer lock
and the config's added keys included: one place to learn a workdir.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import socket
import sys
import time

import filelock
import jax
import ml_collections

from cxr_jax import models
from cxr_jax.data import augment
from cxr_jax.models import kinds
from cxr_jax.models import pca_logreg

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
SUMMARY_FILE = "train_summary.json"
CALIBRATION_FILE = "calibration.json"
OOD_FILE = "ood.npz"
SHIFT_FILE = "shift.npz"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = "writer.lock"
# Seconds a writer waits for the lock before it is refused (default 0: refused at once).
LOCK_WAIT_VARIABLE = "CXR_JAX_LOCK_WAIT"
# Files of a workdir that no command's output may replace (besides checkpoints/).
OWN_FILES = (CONFIG_FILE, HISTORY_FILE, SUMMARY_FILE, CALIBRATION_FILE, LOCK_FILE,
             "config_history.json", "command.json", "train.log", OOD_FILE, SHIFT_FILE,
             kinds.ENSEMBLE_FILE, "MODEL_CARD.md", "model_card.json", "run.json",
             pca_logreg.MODEL_FILE, pca_logreg.META_FILE)


def path(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)


def write_json(file_path: str, obj, all_processes: bool = False) -> None:
  """Writes JSON atomically (never a half-written file); process 0 only, unless told."""
  if jax.process_index() != 0 and not all_processes:
    return
  os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
  tmp = f"{file_path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, file_path)


def _existing_ancestor(path: str) -> str:
  folder = os.path.abspath(path)
  while not os.path.exists(folder) and os.path.dirname(folder) != folder:
    folder = os.path.dirname(folder)
  return folder


def check_writable(file_path: str, flag: str = "--output") -> None:
  """Raises PermissionError naming `file_path` if it cannot be written (checked before work).

  Probes the nearest existing folder on the way, so that a refused command creates nothing.
  """
  folder = _existing_ancestor(os.path.dirname(os.path.abspath(file_path)))
  try:
    if not os.path.isdir(folder):
      raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a file")
    probe = os.path.join(folder, f".cxr_jax_write_probe_{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"Cannot write {file_path} ({e.strerror or e}); choose another "
                          f"{flag}.") from None


def is_inside(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies under it (links resolved)."""
  real, top = os.path.realpath(path), os.path.realpath(folder)
  return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _workdir_part(path: str) -> tuple[str, str] | None:
  """(workdir, its own file or folder) when `path` is a workdir's file or in checkpoints/."""
  real = os.path.realpath(path)
  parent = os.path.dirname(real)
  while parent != os.path.dirname(parent):
    if os.path.exists(os.path.join(parent, CONFIG_FILE)):
      rel = os.path.relpath(real, parent)
      if rel.split(os.sep)[0] == "checkpoints" or rel in OWN_FILES:
        return parent, rel
      return None
    parent = os.path.dirname(parent)
  return None


def check_output(path: str, inputs=(), flag: str = "--output", folder: bool = False) -> None:
  """Refuses, before any work, an output that is an input, a workdir's own file or unwritable.

  inputs: files and folders the command reads (images, data folders, workdirs).
  folder: the output is a folder of files (else one file).
  """
  real = os.path.realpath(path)
  for item in inputs:
    if item and os.path.realpath(item) == real:
      raise ValueError(f"{flag}={path} is also an input of this command ({item}); writing "
                       f"there would replace it. Choose another {flag}.")
  own = _workdir_part(path)
  if own:
    raise ValueError(f"{flag}={path} is {own[1]} of the workdir {own[0]}; writing there "
                     f"would damage it. Choose another {flag}.")
  if folder and os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise ValueError(f"{flag}={path} is a training workdir; choose another {flag}.")
  if folder and os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag}={path} is a file, not a folder; choose another {flag}.")
  if not folder and os.path.isdir(path):
    raise ValueError(f"{flag}={path} is a folder; give a file name.")
  check_writable(os.path.join(path, "x") if folder else path, flag)


def read_json(file_path: str, default=None):
  if not os.path.exists(file_path):
    return default
  with open(file_path) as f:
    return json.load(f)


def config_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    return
  tmp = path(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(config_json(config))
  os.replace(tmp, path(workdir, CONFIG_FILE))


# Config keys added after workdirs were first trained, with the value that reproduces what
# those workdirs did: "all" for every kind, "gradient" for the kinds that train by gradient,
# else per kind. A loaded config gets each one it lacks, so the code reads one value for a
# key (configs/base.py states today's) whatever the config's age. This is history, not a
# second set of defaults.
ADDED_KEYS = {
    "all": {"name": "", "description": "", "operating_point": "val_f1",
            "selection_metric": "f1", "class_weight": "balanced", "data.source": "folder",
            "data.tfds_data_dir": "data/tensorflow_datasets", "data.split": "random",
            "data.min_image_side": 1, "data.crop_border": 0.0, "ood.kind": "mahalanobis",
            "ood.accept": 0.99, "ood.dims": 256, "ood.k": 10, "tta": False},
    "gradient": {"lr_end_factor": 0.01, "label_smoothing": 0.0, "mixup_prob": 0.0,
                 "mixup_alpha": 0.4, "ema_decay": 0.0, "augment.enabled": True,
                 "augment.horizontal_flip": False, "model.refit_batch_norm": False,
                 **{f"augment.{k}": v for k, v in augment.STRENGTHS.items()}},
    "mobilenet_v2": {"model.bn_momentum": 0.999, "model.intensity": "none"},
}
RENAMED_KEYS = {"model.depthwise_impl": "model.ops"}  # Old name -> today's.


def _node(config, key: str):
  *parents, leaf = key.split(".")
  node = config
  for parent in parents:
    if parent not in node:
      with node.unlocked():
        node[parent] = ml_collections.ConfigDict()
    node = node[parent]
  return node, leaf


def with_added_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every ADDED_KEYS entry it lacks, at its old value (in place; returned)."""
  kind = models.get(config.model.name)
  for old, new in RENAMED_KEYS.items():
    old_node, old_leaf = _node(config, old)
    new_node, new_leaf = _node(config, new)
    if old_leaf in old_node and new_leaf not in new_node:
      with new_node.unlocked():
        new_node[new_leaf] = old_node[old_leaf]
  added = {**ADDED_KEYS["all"], **(ADDED_KEYS["gradient"] if kind.trains_by_gradient else {}),
           **ADDED_KEYS.get(kind.name, {})}
  for key, value in added.items():
    node, leaf = _node(config, key)
    if leaf not in node:
      with node.unlocked():
        node[leaf] = value
  if kind.trains_by_gradient and "ops" not in config.model:
    with config.model.unlocked():
      config.model.ops = "auto"
  return config


def load_config(workdir: str) -> ml_collections.ConfigDict:
  file_path = path(workdir, CONFIG_FILE)
  if not os.path.exists(file_path):
    raise FileNotFoundError(f"{file_path} not found: {workdir!r} is not a cxr_jax training "
                            "workdir.")
  try:
    with open(file_path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except ValueError as e:
    raise ValueError(f"{file_path} is not valid JSON ({e}).") from None
  return with_added_keys(config)


def status(workdir: str) -> tuple[bool, str]:
  """(trained, reason): a finished run leaves its config, a model and train_summary.json."""
  if not os.path.isdir(workdir):
    return False, "no workdir"
  if not os.path.exists(path(workdir, CONFIG_FILE)):
    return False, "no config.json"
  if not models.get(load_config(workdir).model.name).has_model(workdir):
    return False, "no trained model in the workdir"
  if not os.path.exists(path(workdir, SUMMARY_FILE)):
    return False, "training has not finished (no train_summary.json)"
  return True, "trained"


def is_trained(workdir: str) -> bool:
  return status(workdir)[0]


# ---------------------------------------------------------------------------
# One writer per workdir.


class WorkdirBusyError(RuntimeError):
  """Another process is writing into the folder (it holds its writer.lock)."""


# realpath -> [the held FileLock (None outside process 0), depth]: re-entrant per process,
# so train_and_evaluate inside a sweep's run or launch.py takes each lock once.
_HELD: dict[str, list] = {}


def _command_line() -> str:
  return "python " + shlex.join(sys.orig_argv[1:])


def _holder_record(command: str | None) -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "time": time.time(),
          "command": command or _command_line()}


def _parse_holder(raw: bytes) -> dict | None:
  try:
    holder = json.loads(raw.decode("utf-8", "replace"))
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _is_running(pid) -> bool | None:
  """Whether `pid` runs on this host (None: cannot tell)."""
  if not isinstance(pid, int) or pid <= 0:
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another account's process.
    return True
  except OverflowError:
    return None
  return True


def _describe(holder: dict | None) -> str:
  if not holder:
    return "a process that has not recorded itself yet (starting or just ending)"
  return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
          f"{holder.get('started')} ({holder.get('command')})")


def _claim(folder: str, record: dict, fd: int) -> None:
  """Once the flock is ours: a previous holder's record means it was killed; then ours."""
  previous = os.pread(fd, 1 << 16, 0)
  if previous.strip():
    holder = _parse_holder(previous)
    here = holder and holder.get("host") == socket.gethostname()
    gone = ("; that pid is no longer running" if here and _is_running(holder.get("pid")) is False
            else "")
    logging.warning("Taking over the lock of %s: its holder, %s, ended without releasing it "
                    "(killed?)%s.", folder, _describe(holder), gone)
  data = (json.dumps(record) + "\n").encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, data, 0)
  os.fsync(fd)


def _read_holder(path: str) -> dict | None:
  """The holder's record; retried briefly, as a holder writes it just after its flock."""
  for _ in range(10):
    try:
      with open(path, "rb") as f:
        holder = _parse_holder(f.read())
    except OSError:
      holder = None
    if holder:
      return holder
    time.sleep(0.05)
  return None


def _busy_message(folder: str, path: str, waited: float) -> str:
  holder = _read_holder(path)
  pid, host = (holder or {}).get("pid", "<pid>"), (holder or {}).get("host", "its host")
  here = holder and host == socket.gethostname()
  orphan = (" (that pid has exited, but a process it started still holds the lock)"
            if here and _is_running(pid) is False else "")
  held = f"still held after {waited:.0f}s" if waited else "held"
  return (f"{folder} is being written by another command ({held}): {_describe(holder)}"
          f"{orphan}. Wait for it to end and re-run (or set {LOCK_WAIT_VARIABLE}=<seconds> "
          f"to wait), or stop it (kill {pid} on {host}); nothing needs deleting: the lock "
          f"goes with the process.")


def _wait_seconds(wait: float | None) -> float:
  if wait is not None:
    return float(wait)
  text = os.environ.get(LOCK_WAIT_VARIABLE, "").strip() or "0"
  try:
    return max(0.0, float(text))
  except ValueError:
    raise ValueError(f"{LOCK_WAIT_VARIABLE}={text!r} is not a number of seconds.") from None


def _acquire(lock, folder: str, path: str, wait: float) -> bool:
  """True once held; False where the file system has no locks (warned, not guarded)."""
  try:
    try:
      lock.acquire(blocking=False)
    except filelock.Timeout:
      if not wait:
        raise
      logging.warning("Waiting up to %.0fs for %s: %s.", wait, folder,
                      _describe(_read_holder(path)))
      lock.acquire(timeout=wait)
  except filelock.Timeout:
    raise WorkdirBusyError(_busy_message(folder, path, wait)) from None
  except OSError as e:
    if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
      logging.warning("%s cannot be locked on this file system (%s): one writer at a time is "
                      "not enforced there.", path, e.strerror or e)
      return False
    raise PermissionError(f"Cannot write {path} ({e.strerror or e}); choose a writable "
                          "folder.") from None
  return True


def _take(folder: str, command: str | None, wait: float | None):
  """The held FileLock of `folder` (created if needed), or None where locks are missing."""
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"Cannot write into {folder} ({e.strerror or e}); choose a "
                          "writable folder.") from None
  path = os.path.join(folder, LOCK_FILE)
  record = _holder_record(command)
  # flock (not a marker file): the kernel releases it when the holder dies, however it dies.
  lock = filelock.FileLock(path, thread_local=False, preserve_lock_file=True,
                           on_acquired=lambda fd: _claim(folder, record, fd))
  return lock if _acquire(lock, folder, path, _wait_seconds(wait)) else None


def _release(lock) -> None:
  try:  # No record left behind: the next writer then logs no takeover.
    os.truncate(lock.lock_file, 0)
  except OSError:
    pass
  lock.release()


def _agree(ok: bool) -> bool:
  """Whether process 0 took the lock, known to every process (none trains alone)."""
  if jax.process_count() == 1:
    return ok
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _take_everywhere(folder: str, command: str | None, wait: float | None):
  """Process 0 takes the lock (once for the whole job); the others learn how that went."""
  if jax.process_index() != 0:
    if not _agree(False):  # Process 0's answer; this process's value is not used.
      raise WorkdirBusyError(f"Process 0 could not take the lock of {folder}; its error "
                             "names why.")
    return None
  try:
    lock = _take(folder, command, wait)
  except BaseException:
    _agree(False)
    raise
  _agree(True)
  return lock


@contextlib.contextmanager
def writer_lock(folder: str, command: str | None = None, wait: float | None = None):
  """Holds `folder`'s one-writer lock for the block (creating the folder); re-entrant.

  command: what the holder is, as a refused writer is told (default: this command line).
  wait: seconds to wait for another holder (default $CXR_JAX_LOCK_WAIT, else 0).
  Raises WorkdirBusyError naming the holder, before any work, if another process holds it.
  """
  key = os.path.realpath(folder)
  if key in _HELD:
    _HELD[key][1] += 1
    try:
      yield
    finally:
      _HELD[key][1] -= 1
    return
  lock = _take_everywhere(folder, command, wait)
  _HELD[key] = [lock, 1]
  try:
    yield
  finally:
    del _HELD[key]
    if lock is not None:
      _release(lock)
