"""The comparison report of every trained model (`make report`).

  python -m cxr_jax.tools.report --workdirs=workdirs --output=reports/latest \
      [--external=name=path ...] [--train_missing] [--target_sensitivity=0.95]

Each config of --configs is one model, its workdir `<workdirs>/<config.name>`;
--train_missing trains those without a finished run first.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import sys  # pylint: disable=g-import-not-at-top,wrong-import-position
import time

from absl import flags

from cxr_jax import report
from cxr_jax import train
from cxr_jax.inference import adaptation
from cxr_jax.report import collect
from cxr_jax.tools import config_files
from cxr_jax.tools import startup

# The comparison's models, in the report's order.
COMPARISON_CONFIGS = ("configs/pca_logreg.py", "configs/cnn_baseline.py", "configs/cnn_v2.py",
                      "configs/cnn_v3.py", "configs/mobilenet.py", "configs/mobilenet_alpha1.py")

flags.DEFINE_string("workdirs", "workdirs", "Folder holding one workdir per config name.")
flags.DEFINE_list("configs", list(COMPARISON_CONFIGS), "The models of the report, as config "
                  "files; a config whose pretrained weights file is missing is left out "
                  "unless its workdir exists.")
flags.DEFINE_integer("seed", None, "A sweep's workdirs: <workdirs>/<config name>/seed_<seed>; "
                     "the sweep's spread over seeds (<workdirs>/sweep.json) is reported too.")
flags.DEFINE_string("output", "reports/latest", "Where REPORT.md, report.json and figures go.")
flags.DEFINE_multi_string("external", [], "name=path of a NORMAL/ + PNEUMONIA/ folder to "
                          "score with the validation-chosen settings; repeatable.")
flags.DEFINE_bool("train_missing", False, "Train the models whose workdir has no finished run.")
flags.DEFINE_float("target_sensitivity", 0.95, "Sensitivity the second operating point must "
                   "reach on validation.")
flags.DEFINE_string("sizes_dir", "data/chest_xray_fullres_sample/train",
                    "Folder whose original image sizes the EDA shows.")
flags.DEFINE_integer("max_per_class", 0, "> 0: limit validation, test and external sets to "
                     "this many images per class (quick checks; not the benchmark).")
flags.DEFINE_integer("n_boot", 1000, "Bootstrap resamples for the confidence intervals.")
flags.DEFINE_enum("gradcam", "all", ["all", "best", "none"], "Grad-CAM figures for every "
                  "convolutional model, the selected one only, or none.")
flags.DEFINE_enum("adapt", adaptation.AUTO, list(adaptation.CHOICES), "Label-free "
                  "adaptation of test and each external folder, reported beside the model's "
                  "own numbers (auto: when the folder test calls the folder shifted).")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  start = time.time()
  report.build_report(
      collect.entries_from_configs([config_files.load(c) for c in FLAGS.configs],
                                   FLAGS.workdirs, FLAGS.seed), FLAGS.output,
      collect.parse_externals(FLAGS.external), FLAGS.train_missing, train.train_and_evaluate,
      FLAGS.target_sensitivity, FLAGS.sizes_dir, FLAGS.max_per_class, FLAGS.n_boot,
      FLAGS.gradcam, command="python -m cxr_jax.tools.report " + " ".join(sys.argv[1:]),
      adapt=FLAGS.adapt)
  print(f"Wall time: {time.time() - start:.1f}s")


if __name__ == "__main__":
  startup.run(main, resume_hint="Re-running the same command reuses the finished workdirs.")
