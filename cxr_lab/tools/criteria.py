"""Each validation criterion's Spearman with test over sweeps' runs (evidence only).

  python -m cxr_lab.tools.criteria --sweep=workdirs/sweeps/freeze/sweep.json \
      --output=benchmarks/freeze/criteria.md
  python -m cxr_lab.tools.criteria --sweep=benchmarks/freeze/sweep.json \
      --sweep=workdirs/sweeps/levers20/sweep.json --output=benchmarks/levers20/criteria.md
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app
from absl import flags

from cxr_jax import workdir as workdir_lib
from cxr_lab import criteria
from cxr_jax.tools import startup

flags.DEFINE_multi_string("sweep", None, "A sweep's sweep.json (python -m "
                          "cxr_lab.tools.sweep); repeatable, a later file's run of the same "
                          "recipe and seed replacing an earlier one's.")
flags.DEFINE_string("output", "", "Also write the markdown here.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.sweep:
    raise app.UsageError("--sweep is required.")
  if FLAGS.output:
    workdir_lib.check_output(FLAGS.output, FLAGS.sweep, "--output")
  sweeps = []
  for path in FLAGS.sweep:
    with open(path) as f:
      sweeps.append(json.load(f))
  text = criteria.markdown(criteria.runs_table(criteria.merge(sweeps)))
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      f.write(text)


if __name__ == "__main__":
  startup.run(main)
