"""Trains N seeds of each config into sibling workdirs and tables mean ± std of every metric.

  python -m cxr_lab.tools.sweep --config=configs/mobilenet.py --seeds=0,1,2
  python -m cxr_lab.tools.sweep --config=configs/mobilenet.py:full+loss \
      --config=configs/mobilenet.py:full+loss+aug --seeds=0,1,2 --root=workdirs/sweeps/study

Writes <root>/<config name>/seed_<s>/ (workdirs), <root>/sweep.json and <root>/SWEEP.md.
Re-running the same command resumes: finished runs are reused.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import time  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax
from absl import flags

from cxr_jax import checkpoints
from cxr_lab import sweep
from cxr_jax import train
from cxr_jax import workdir as workdir_lib
from cxr_jax.tools import config_files
from cxr_jax.tools import startup

flags.DEFINE_multi_string("config", None, "Config file[:variants]; repeatable.", required=True)
flags.DEFINE_multi_string("set", [], "dotted.key=value override of every config; repeatable "
                          "(e.g. --set=data.source=folder).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every config.")
flags.DEFINE_enum("order", "recipe", ["recipe", "seed"], "recipe: all seeds of a config "
                  "before the next; seed: seed 0 of every config first.")
flags.DEFINE_string("root", "workdirs/sweeps/default", "Folder of the sweep's workdirs.")
flags.DEFINE_bool("test", True, "Also score every run on the test split (reported only).")
flags.DEFINE_float("deadline_minutes", 0, "> 0: start no new run after this many minutes.")
flags.DEFINE_bool("compact", False, "Drop each finished run's resume state (optimizer, older "
                  "epochs): its workdir still evaluates, in a fraction of the space.")
flags.DEFINE_string("compilation_cache", "", "JAX persistent compilation cache folder "
                    "(recipes that share a compiled step then compile once).")
FLAGS = flags.FLAGS


def _compact(workdir: str, run: dict) -> None:
  del run
  checkpoints.compact(workdir)


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  configs = {}
  for spec in FLAGS.config:
    config = config_files.load(spec)
    for assignment in FLAGS.set:
      config_files.override(config, assignment)
    configs[config.name] = config
  workdir_lib.check_output(FLAGS.root, flag="--root", folder=True)
  deadline = time.time() + 60 * FLAGS.deadline_minutes if FLAGS.deadline_minutes else None
  results = sweep.run_sweep(configs, [int(s) for s in FLAGS.seeds], FLAGS.root,
                            train.train_and_evaluate, test=FLAGS.test, deadline=deadline,
                            seed_major=FLAGS.order == "seed",
                            after_run=_compact if FLAGS.compact else None)
  print(sweep.format_table(results))
  print(f"Wrote {FLAGS.root}/{sweep.SWEEP_FILE} and {sweep.TABLE_FILE}")


if __name__ == "__main__":
  startup.run(main, resume_hint="Re-running the same command reuses the finished runs.")
