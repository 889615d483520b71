"""Each validation criterion's Spearman with test over a sweep's runs (evidence only).

  python -m cxr_jax.tools.criteria --sweep=workdirs/sweeps/freeze/sweep.json \
      --output=benchmarks/freeze/criteria.md
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app
from absl import flags

from cxr_jax import workdir as workdir_lib
from cxr_jax.evaluation import criteria
from cxr_jax.tools import startup

flags.DEFINE_string("sweep", None, "A sweep's sweep.json (python -m cxr_jax.tools.sweep).")
flags.DEFINE_string("output", "", "Also write the markdown here.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.sweep:
    raise app.UsageError("--sweep is required.")
  if FLAGS.output:
    workdir_lib.check_output(FLAGS.output, [FLAGS.sweep], "--output")
  with open(FLAGS.sweep) as f:
    text = criteria.markdown(criteria.runs_table(json.load(f)))
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text)


if __name__ == "__main__":
  startup.run(main)
