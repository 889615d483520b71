"""Makes an ensemble workdir of trained workdirs (seeds of a recipe, or different models).

  python -m cxr_jax.tools.ensemble --workdir=workdirs/mobilenet_v2_x3 \
      --members=workdirs/sweeps/x/mobilenet_v2/seed_0,workdirs/sweeps/x/mobilenet_v2/seed_1

Then evaluate, predict and the report take it like any workdir.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from cxr_jax import train
from cxr_jax.tools import startup

flags.DEFINE_string("workdir", None, "The ensemble workdir to write.", required=True)
flags.DEFINE_list("members", None, "Trained member workdirs.", required=True)
flags.DEFINE_string("name", None, "Name in reports (default: the workdir's folder name).")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  summary = train.create_ensemble(FLAGS.workdir, FLAGS.members, FLAGS.name)
  v = summary["val"]
  print(f"Ensemble of {len(summary['members'])} in {FLAGS.workdir}: validation log loss "
        f"{v['loss']:.4f}, F1 {v['f1']:.4f}, AUC {v['roc_auc']:.4f}.")


if __name__ == "__main__":
  startup.run(main)
