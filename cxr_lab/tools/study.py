"""A sealed study, step by step (cxr_lab/study.py): run, choose, then ablate.

  python -m cxr_lab.tools.study --study=studies/<name> --step=run      # trains; validation only
  python -m cxr_lab.tools.study --study=studies/<name> --step=choose   # choice.json: commit it
  python -m cxr_lab.tools.study --study=studies/<name> --step=ablate   # test/, once chosen

`run` refuses a plan.json that is not committed; `ablate` refuses a study whose
choice.json is missing or not committed. Re-running `run` resumes: finished runs are reused.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from cxr_jax import checkpoints
from cxr_jax import train
from cxr_jax.tools import startup
from cxr_lab import study_steps

STEPS = ("run", "choose", "ablate")
flags.DEFINE_string("study", None, "The study's folder (holds plan.json).", required=True)
flags.DEFINE_enum("step", None, list(STEPS), "Which step.", required=True)
flags.DEFINE_bool("compact", True, "Drop each finished run's resume state (optimizer, older "
                  "epochs): its workdir still evaluates, in a fraction of the space.")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  if FLAGS.step == "run":
    compact = (lambda workdir, run: checkpoints.compact(workdir)) if FLAGS.compact else None
    results = study_steps.run(FLAGS.study, train.train_and_evaluate, after_run=compact)
    print(f"{len(results)} candidates measured; now: --step=choose")
  elif FLAGS.step == "choose":
    choice = study_steps.choose(FLAGS.study)
    print(json.dumps({k: choice[k] for k in ("chosen", "make_train")}))
    print(f"Wrote {FLAGS.study}/choice.json: commit it, then --step=ablate")
  else:
    ablation = study_steps.ablate(FLAGS.study)
    print(f"Chosen {ablation['chosen']}; wrote {FLAGS.study}/ablation.json and "
          f"{study_steps.ABLATION_TABLE}")


if __name__ == "__main__":
  startup.run(main, resume_hint="Re-running --step=run reuses the finished runs.")
