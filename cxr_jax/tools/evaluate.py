"""Evaluates a trained workdir on any NORMAL/ + PNEUMONIA/ folder; prints a table, writes JSON.

  python -m cxr_jax.tools.evaluate --workdir=workdirs/cnn_v3 --data_dir=data/chest_xray/test \
      --output=workdirs/cnn_v3/test_metrics.json
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import os  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from cxr_jax import workdir as workdir_lib
from cxr_jax import evaluate
from cxr_jax.tools import scoring_flags
from cxr_jax.tools import startup

flags.DEFINE_string("data_dir", None, "Folder with NORMAL/ and PNEUMONIA/; default: the "
                    "test/ split of the config's data_dir.")
flags.DEFINE_string("output", None, "Where to write the metrics JSON; default "
                    "<workdir>/eval_<folder name>.json.")
scoring_flags.define("Also report a label-free adaptation to the folder (its images only): "
                     "BatchNorm statistics (AdaBN) and/or the class prior (EM).")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  config = workdir_lib.load_config(FLAGS.workdir)
  data_dir = FLAGS.data_dir or os.path.join(config.data.data_dir, "test")
  output = FLAGS.output or os.path.join(
      FLAGS.workdir, f"eval_{os.path.basename(os.path.normpath(data_dir))}.json")
  result, card = evaluate.evaluate_to_file(FLAGS.workdir, data_dir, output, FLAGS.batch_size,
                                           tta=FLAGS.tta, adapt=FLAGS.adapt)
  print(evaluate.format_result(result))
  print(f"Wrote {output}")
  if card:
    print(f"Refreshed {card}")


if __name__ == "__main__":
  startup.run(main)
