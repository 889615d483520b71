"""An ensemble: trained member workdirs whose probabilities are averaged; its "training" is
the members' check and the threshold that maximises validation F1 of their mean."""

from __future__ import annotations

import copy
import os
from typing import Callable

import ml_collections

from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax import workdir as workdir_lib
from cxr_jax.metrics import classification as metrics_lib
from cxr_jax.models import kinds


def _member_path(workdir: str, member: str) -> str:
  """`member` relative to the ensemble's workdir (absolute if that climbs far)."""
  rel = os.path.relpath(os.path.abspath(member), os.path.abspath(workdir))
  return rel if not rel.startswith(os.pardir + os.sep + os.pardir + os.sep + os.pardir) \
      else os.path.abspath(member)


def check_members(workdir: str, members: list[str]) -> None:
  """Refuses, before anything is written, members that are not finished or the output itself."""
  if len(members) < 2:
    raise ValueError("An ensemble needs at least two member workdirs.")
  for member in members:
    if os.path.realpath(member) == os.path.realpath(workdir):
      raise ValueError(f"--workdir={workdir} is also a member; an ensemble needs a workdir "
                       "of its own.")
    trained, reason = workdir_lib.status(member)
    if not trained:
      raise ValueError(f"Ensemble member {member!r} is not a finished workdir ({reason}).")
  if os.path.exists(workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)):
    kind = workdir_lib.load_config(workdir).model.name
    if kind != models.get(models.ENSEMBLE).name:  # Its config and model card would be replaced.
      raise ValueError(f"{workdir} is a training workdir of {kind}; an ensemble needs a "
                       "workdir of its own.")


def config_of(workdir: str, members: list[str], name: str | None = None
              ) -> ml_collections.ConfigDict:
  """The first member's data and evaluation settings; config.model names the members."""
  config = copy.deepcopy(workdir_lib.load_config(members[0]))
  config.name = name or os.path.basename(os.path.normpath(workdir))
  config.description = f"ensemble of {len(members)}: " + ", ".join(
      workdir_lib.load_config(m).name or m for m in members)
  config.model = models.get(models.ENSEMBLE).model_config([_member_path(workdir, m) for m in members])
  return config


def train(kind: models.EnsembleKind, config: ml_collections.ConfigDict, workdir: str,
          datasets=None, *, load_predictor: Callable) -> models.Trained:
  """The members' averaged probabilities: their validation-F1 threshold and metrics.

  load_predictor(workdir): the ensemble's own Predictor (the kinds' table passes its own).
  """
  check_members(workdir, kind.member_dirs(workdir, config.model.members))
  record = {"members": list(config.model.members), "threshold": 0.5}
  record_path = workdir_lib.path(workdir, kinds.ENSEMBLE_FILE)
  workdir_lib.write_json(record_path, record)
  train_data, val = datasets or (None, data_lib.load(config.data, "validation"))
  probs = load_predictor(workdir).probs(val.images)
  record["threshold"] = metrics_lib.f1_optimal_threshold(val.labels, probs)
  record["val_metrics"] = metrics_lib.validation_metrics(val.labels, probs)
  workdir_lib.write_json(record_path, record)
  summary = {"model": config.model.name, "name": config.name, "members": record["members"],
             "params": None, "best_epoch": None, "val": record["val_metrics"],
             "val_threshold": record["threshold"], "train_seconds": None}
  return models.Trained(summary, val, train_data)
