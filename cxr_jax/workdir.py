"""A training workdir: what each file is, whether training finished, atomic JSON writes.

  workdir/config.json          the config it was trained with (rebuilds everything)
  workdir/checkpoints/         Orbax checkpoints (`checkpoints`)
  workdir/history.json         one record per epoch
  workdir/train_summary.json   written when training finishes
  workdir/calibration.json     temperature and operating points fitted on validation
  workdir/tensorboard/         TensorBoard summaries
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from cxr_jax import checkpoints
from cxr_jax import models
from cxr_jax.models import pca_logreg

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
SUMMARY_FILE = "train_summary.json"
CALIBRATION_FILE = "calibration.json"
TENSORBOARD_DIR = "tensorboard"


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


def check_writable(file_path: str) -> None:
  """Raises PermissionError naming `file_path` if it cannot be written (checked before work)."""
  folder = os.path.dirname(os.path.abspath(file_path))
  try:
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f".cxr_jax_write_probe_{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"Cannot write {file_path} ({e.strerror or e}); choose another "
                          "--output.") from None


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


def load_config(workdir: str) -> ml_collections.ConfigDict:
  file_path = path(workdir, CONFIG_FILE)
  if not os.path.exists(file_path):
    raise FileNotFoundError(f"{file_path} not found: {workdir!r} is not a cxr_jax training "
                            "workdir.")
  try:
    with open(file_path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except ValueError as e:
    raise ValueError(f"{file_path} is not valid JSON ({e}).") from None


def status(workdir: str) -> tuple[bool, str]:
  """(trained, reason): a finished run leaves its config, a model and train_summary.json."""
  if not os.path.isdir(workdir):
    return False, "no workdir"
  if not os.path.exists(path(workdir, CONFIG_FILE)):
    return False, "no config.json"
  config = load_config(workdir)
  kind = models.get(config.model.name).framework
  has_model = (checkpoints.has_best(workdir) if kind == models.FLAX
               else pca_logreg.is_saved(workdir) if kind == models.SKLEARN
               else os.path.exists(path(workdir, "ensemble.json")))
  if not has_model:
    return False, "no trained model in the workdir"
  if not os.path.exists(path(workdir, SUMMARY_FILE)):
    return False, "training has not finished (no train_summary.json)"
  return True, "trained"


def is_trained(workdir: str) -> bool:
  return status(workdir)[0]
