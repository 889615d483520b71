"""Does the model lean on the image border? Scores with and without it (evaluation.shortcut).

  python -m cxr_lab.tools.border_probe --workdir=workdirs/mobilenet_v2 --split=test \
      --fraction=0.08 --output=benchmarks/border_probe.json
  python -m cxr_lab.tools.border_probe --workdir=W --data_dir=/data/hospital_b

For each workdir: accuracy, specificity, sensitivity and ROC AUC at 0.5 on the images as
they are and with a band of --fraction of each side made flat; the share of answers that
change; and the share of Grad-CAM's mass in that band. With several workdirs, also the
mean ± std over the runs (seeds) of each model. A measurement only.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax import registry
from cxr_lab import shortcut
from cxr_jax.tools import startup

flags.DEFINE_multi_string("workdir", None, "Trained workdir; repeatable.", required=True)
flags.DEFINE_enum("split", "test", ["validation", "test"], "Kermany split to probe (ignored "
                  "with --data_dir).")
flags.DEFINE_string("data_dir", "", "Any NORMAL/ + PNEUMONIA/ folder instead of a split.")
flags.DEFINE_float("fraction", 0.08, "Border band: this fraction of each side.")
flags.DEFINE_integer("gradcam_images", 64, "Images (a fixed sample) given Grad-CAM; 0: none.")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  if FLAGS.output:  # Checked before the work, which a late failure would lose.
    workdir_lib.check_output(FLAGS.output, [*FLAGS.workdir, FLAGS.data_dir])
  results = {}
  for workdir in FLAGS.workdir:
    predictor = registry.load_predictor(workdir)
    if FLAGS.data_dir:
      data = data_lib.load_folder(FLAGS.data_dir, predictor.preprocess)
    else:
      data = data_lib.load(predictor.config.data, FLAGS.split)
    results[workdir] = shortcut.border_probe(predictor, data, FLAGS.fraction,
                                             gradcam_images=FLAGS.gradcam_images)
    results[workdir]["data"] = FLAGS.data_dir or FLAGS.split
    print(shortcut.format_probe(f"{predictor.model_name} ({workdir}) on "
                                f"{FLAGS.data_dir or FLAGS.split}", results[workdir]),
          flush=True)
  if len(results) > 1:
    print("Mean ± std over the runs of each model:\n"
          + shortcut.format_summary(shortcut.summarize(results)))
  if FLAGS.output:
    workdir_lib.write_json(FLAGS.output, results)
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
  startup.run(main)
