"""Trains a model from a config (intentionally kept short: the logic lives in cxr_jax/).

  python launch.py --config=configs/mobilenet.py --config.batch_size=64
  python launch.py --config=configs/cnn_v3.py:debug --workdir=/tmp/debug
"""

if __name__ == "__main__":
  from cxr_jax.tools import malloc_tuning
  malloc_tuning.reexec_with_tunables()  # Before the heavy imports: restarts once.

import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import shlex
import sys
import time

from absl import app
from absl import flags
from absl import logging
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
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("workdirs", config.name or config.model.name)
  logging.info("Config:\n%s", config)
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.write_json(os.path.join(workdir, model_card.COMMAND_FILE), {
      "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
      "time": time.strftime("%Y-%m-%d %H:%M:%S")})
  train.train_and_evaluate(config, workdir, FLAGS.allow_config_change)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  startup.run(main, resume_hint="Re-running the same command resumes from the last epoch.")
