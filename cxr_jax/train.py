"""One run of any model kind, from a checked config to a finished workdir.

    train_and_evaluate(config, workdir) -> summary dict   (any kind: config.model.name)
    create_ensemble(workdir, members) -> summary dict     (cxr_jax.tools.ensemble)

The kind's trainer (`registry.ALL_KINDS`) trains; `finish_run` then ends every run alike:
the calibration and OOD detector fitted on validation, train_summary.json and the model
card. A workdir records its config; another config is refused unless
`allow_config_change` (then the change is recorded in config_history.json).
"""

from __future__ import annotations

import json
import logging
import os
import time

import ml_collections

from cxr_jax import config_checks
from cxr_jax import model_card
from cxr_jax import models
from cxr_jax import registry
from cxr_jax import workdir as workdir_lib
from cxr_jax.fits import fit
from cxr_jax.trainers import ensemble

CONFIG_HISTORY_FILE = "config_history.json"
# Settings that change no number of the run: a resumed workdir may differ in them.
OPERATIONAL_KEYS = ("log_every_steps", "eval_batch_size")


class ConfigChangedError(ValueError):
  """The workdir was trained with another config."""


# ---------------------------------------------------------------------------
# The workdir's config.


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def config_differences(old: dict, new: dict) -> dict[str, tuple]:
  """{dotted key: (old, new)} of every value that differs (operational keys left out)."""
  a, b = _flatten(old), _flatten(new)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and k not in OPERATIONAL_KEYS}


def check_config_matches(config, workdir: str, allow_change: bool) -> None:
  """Refuses (ConfigChangedError naming the keys) to resume a workdir trained otherwise."""
  path = workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return
  old = workdir_lib.load_config(workdir).to_dict()
  new = json.loads(config.to_json_best_effort())
  diff = config_differences(old, new)
  if not diff:
    return
  shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:8])
  more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
  if not allow_change:
    raise ConfigChangedError(
        f"{workdir} was trained with another config ({shown}{more}). Use a fresh --workdir, "
        "or pass --allow_config_change to continue this one with the new settings.")
  logging.warning("Continuing %s with a changed config: %s%s.", workdir, shown, more)
  history_path = workdir_lib.path(workdir, CONFIG_HISTORY_FILE)
  history = workdir_lib.read_json(history_path, [])
  history.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "previous": old,
                  "changed": {k: {"from": a, "to": b} for k, (a, b) in diff.items()}})
  workdir_lib.write_json(history_path, history)


def finish_run(workdir: str, trained: models.Trained) -> dict:
  """The end of every run, whatever its kind; returns the summary.

  The calibration and OOD detector are fitted on validation once, beside the model
  (predict and evaluate reuse them), then train_summary.json and the model card written.
  """
  predictor = registry.load_predictor(workdir)
  fit.load_or_fit(predictor, validation=trained.validation, train=trained.train)
  workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE), trained.summary)
  model_card.write(workdir)
  if trained.done:
    logging.info("%s", trained.done)
  return trained.summary


def prepare_workdir(config, workdir: str, allow_config_change: bool) -> None:
  """Checks the workdir (its lock held) before any data is read, then records the config."""
  check_config_matches(config, workdir, allow_config_change)
  workdir_lib.save_config(workdir, config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False, datasets=None,
                       command: str | None = None, on_start=None) -> dict:
  """Trains config.model on the patient-grouped train split, selects on validation.

  Any kind (config.model.name): its `train`, then `finish_run`.
  datasets: (train, validation) already decoded for config.data (a sweep decodes once).
  command: how the workdir's lock names this run to a refused second writer.
  on_start(): called once the config and the workdir are checked, before any data is read.
  Returns a summary dict (also written to workdir/train_summary.json).
  """
  config_checks.check(config)  # Before the workdir exists: a refused config creates nothing.
  entry = registry.get(config.model.name)
  with workdir_lib.writer_lock(workdir, command):
    prepare_workdir(config, workdir, allow_config_change)
    if on_start is not None:
      on_start()
    return finish_run(workdir, entry.train(config, workdir, datasets))


def create_ensemble(workdir: str, members: list[str], name: str | None = None) -> dict:
  """Writes an ensemble workdir of trained `members`; returns its summary.

  Made again with other members, the workdir takes them (recorded in config_history.json).
  """
  ensemble.check_members(workdir, members)
  return train_and_evaluate(ensemble.config_of(workdir, members, name), workdir,
                            allow_config_change=True)
