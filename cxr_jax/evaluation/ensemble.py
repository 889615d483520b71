"""Ensembles as a model kind: a workdir that names its members and averages their probabilities.

  create("workdirs/ens", ["workdirs/a/seed_0", "workdirs/a/seed_1", "workdirs/a/seed_2"])

The ensemble workdir holds config.json (the first member's data and evaluation
settings, model.name "ensemble"), ensemble.json (the members, relative paths where
possible, and the validation-F1 threshold of the averaged probabilities) and
train_summary.json. `evaluation.predictor.load_predictor` then gives an
EnsemblePredictor: evaluate, predict, the report, calibration, Grad-CAM (members
averaged) and the out-of-distribution score (members' features concatenated) work
on it as on any workdir. Members are chosen by the caller; nothing is chosen on test.
"""

from __future__ import annotations

import copy
import os

import ml_collections
from sklearn import metrics as skm

from cxr_jax import data as data_lib
from cxr_jax import model_card
from cxr_jax import models
from cxr_jax import workdir as workdir_lib
from cxr_jax.evaluation import fit
from cxr_jax.evaluation import metrics as metrics_lib
from cxr_jax.evaluation import predictor as predictor_lib


def _member_path(workdir: str, member: str) -> str:
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
    kind = workdir_lib.load_config(workdir).model.get("name")
    if kind != models.ENSEMBLE:  # Its config and model card would be replaced.
      raise ValueError(f"{workdir} is a training workdir of {kind}; an ensemble needs a "
                       "workdir of its own.")


def _config(workdir: str, members: list[str], name: str | None) -> ml_collections.ConfigDict:
  config = copy.deepcopy(workdir_lib.load_config(members[0]))
  config.name = name or os.path.basename(os.path.normpath(workdir))
  config.description = f"ensemble of {len(members)}: " + ", ".join(
      workdir_lib.load_config(m).get("name", m) for m in members)
  config.model = ml_collections.ConfigDict({"name": models.ENSEMBLE})
  return config


def create(workdir: str, members: list[str], name: str | None = None) -> dict:
  """Writes an ensemble workdir of trained `members` (its lock held); returns its summary."""
  check_members(workdir, members)
  config = _config(workdir, members, name)
  with workdir_lib.writer_lock(workdir):
    return _write(workdir, members, config)


def _write(workdir: str, members: list[str], config: ml_collections.ConfigDict) -> dict:
  record = {"members": [_member_path(workdir, m) for m in members], "threshold": 0.5}
  workdir_lib.save_config(workdir, config)
  workdir_lib.write_json(workdir_lib.path(workdir, predictor_lib.ENSEMBLE_FILE), record)
  predictor = predictor_lib.load_predictor(workdir)
  val = data_lib.load(config.data, "validation")
  probs = predictor.probs(val.images)
  record["threshold"] = metrics_lib.f1_optimal_threshold(val.labels, probs)
  record["val_metrics"] = metrics_lib.binary_metrics(val.labels, probs, 0.5)
  record["val_metrics"]["loss"] = float(skm.log_loss(val.labels, probs, labels=[0, 1]))
  workdir_lib.write_json(workdir_lib.path(workdir, predictor_lib.ENSEMBLE_FILE), record)
  predictor = predictor_lib.load_predictor(workdir)
  fit.load_or_fit(predictor, validation=val)
  summary = {"model": models.ENSEMBLE, "name": config.name, "members": record["members"],
             "params": None, "best_epoch": None, "val": record["val_metrics"],
             "val_threshold": record["threshold"], "train_seconds": None}
  workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE), summary)
  model_card.write(workdir)
  return summary
