"""Scores image files (JPEG, PNG, DICOM, ...) with a trained workdir; one CSV row per file.

  python -m cxr_jax.tools.predict --workdir=workdirs/cnn_v3 scans/ extra.dcm \
      --output=preds.csv [--gradcam_dir=overlays] [--target_sensitivity=0.95]
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from cxr_jax import workdir as workdir_lib
from cxr_jax.data import folder as folder_lib
from cxr_jax import predict
from cxr_jax.tools import scoring_flags
from cxr_jax.tools import startup

scoring_flags.define("Label-free adaptation to the given files (their images only); answered "
                     "beside the model's own (adapted_* columns).")
flags.DEFINE_string("output", "predictions.csv", "CSV to write, one row per file.")
flags.DEFINE_string("gradcam_dir", None, "Write a Grad-CAM overlay PNG per file here "
                    "(convolutional models only).")
flags.DEFINE_float("target_sensitivity", None, "Label at the highest threshold reaching "
                   "this validation sensitivity instead of the validation-F1 threshold.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more image files or folders to score.")
  # Before any work: the CSV and overlays must replace no input (an image, a folder, the
  # workdir's files). predict reads the workdir only: it never takes its writer lock.
  inputs = [FLAGS.workdir, *argv[1:], *(p for p, _ in folder_lib.list_files(argv[1:]))]
  workdir_lib.check_output(FLAGS.output, inputs)
  if FLAGS.gradcam_dir:
    workdir_lib.check_output(FLAGS.gradcam_dir, inputs, "--gradcam_dir", folder=True)
  summary = predict.predict_files(FLAGS.workdir, argv[1:], FLAGS.output, FLAGS.gradcam_dir,
                                  FLAGS.target_sensitivity, FLAGS.batch_size, FLAGS.tta,
                                  FLAGS.adapt)
  print(predict.format_summary(summary))


if __name__ == "__main__":
  startup.run(main, positional=True)
