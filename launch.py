"""Trains a model from a config (intentionally kept short: the logic lives in cxr_jax/).

  python launch.py --config=configs/mobilenet.py --config.batch_size=64
  python launch.py --config=configs/cnn_v3.py:debug --workdir=/tmp/debug
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import logging  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import shlex
import sys
import time

import jax
from absl import flags
from ml_collections import config_flags

from cxr_jax import model_card
from cxr_jax import train
from cxr_jax import workdir as workdir_lib
from cxr_jax.tools import startup

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics go here; an existing "
                    "checkpoint is resumed. Default: workdirs/<config.name>.")
flags.DEFINE_bool("allow_config_change", False, "Continue a workdir trained with another "
                  "config (the change is recorded in config_history.json); refused otherwise.")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("workdirs", config.name or config.model.name)
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

  def record_command():  # Once the config is checked and the workdir's lock is ours.
    if jax.process_index() == 0:
      startup.log_to_file(os.path.join(workdir, "train.log"))
    logging.getLogger("cxr_jax.details").info("Config:\n%s", config)
    workdir_lib.write_json(os.path.join(workdir, model_card.COMMAND_FILE), {
        "command": command, "time": time.strftime("%Y-%m-%d %H:%M:%S")})

  start = time.time()
  summary = train.train_and_evaluate(config, workdir, FLAGS.allow_config_change,
                                     command=command, on_start=record_command)
  if jax.process_index() == 0:
    print(next_steps(workdir, summary, time.time() - start), flush=True)


def next_steps(workdir: str, summary: dict, seconds: float) -> str:
  """What a new user sees when training ends: where the model is, how good, what next."""
  v = summary["val"]
  selected = summary.get("selection_metric") or "F1 (C for PCA)"
  lines = [
      "", f"Done in {seconds / 60:.1f} min. Model: {workdir} (best epoch "
      f"{summary.get('best_epoch')} of {summary.get('epochs_run')}, selected by validation "
      f"{selected}).",
      f"  validation: log loss {v.get('loss', float('nan')):.4f}, ROC AUC "
      f"{v['roc_auc'] or float('nan'):.4f}, F1 {v['f1']:.4f} and accuracy {v['accuracy']:.4f} "
      "at 0.5",
      f"  model card: {os.path.join(workdir, model_card.CARD_FILE)}; full log: "
      f"{os.path.join(workdir, 'train.log')}",
      "Next:",
      f"  evaluate  python -m cxr_jax.tools.evaluate --workdir={workdir}",
      f"  predict   python -m cxr_jax.tools.predict --workdir={workdir} scans/ "
      "--output=preds.csv --gradcam_dir=overlays",
      "  report    make report",
      f"  export    python -m cxr_jax.tools.export --workdir={workdir}",
      f"  serve     python -m cxr_jax.tools.serve --workdir={workdir}   (http://127.0.0.1:8000)",
  ]
  return "\n".join(lines)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  startup.run(main, resume_hint="Re-running the same command resumes from the last epoch.")
