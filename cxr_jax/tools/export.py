"""Exports a trained workdir for ONNX Runtime, TensorFlow Serving and LiteRT, checked on test.

  python -m cxr_jax.tools.export --workdir=workdirs/mobilenet_v2 --format=all
  python -m cxr_jax.tools.export --workdir=workdirs/mobilenet_v2 --format=onnx --output_dir=out

Writes <output_dir>/model.onnx, saved_model/, model.tflite, model_int8.tflite (int8
weights), each with its metadata JSON (operating threshold, OOD threshold,
preprocessing), then runs each in its runtime on the test split against the JAX
function and prints the parity (written to <output_dir>/parity.json).
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import os

from absl import app
from absl import flags

from cxr_jax import export
from cxr_jax.tools import startup

flags.DEFINE_string("workdir", None, "Trained workdir (a neural network).", required=True)
flags.DEFINE_list("format", ["all"], f"Some of {list(export.FORMATS)}, or all.")
flags.DEFINE_string("output_dir", None, "Default: <workdir>/export.")
flags.DEFINE_bool("check", True, "Run every exported file on the test split and compare.")
flags.DEFINE_integer("max_per_class", 0, "> 0: check on that many test images per class.")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  formats = export.FORMATS if FLAGS.format == ["all"] else FLAGS.format
  unknown = set(formats) - set(export.FORMATS)
  if unknown:
    raise app.UsageError(f"--format: unknown {sorted(unknown)}; known {list(export.FORMATS)}.")
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.workdir, "export")
  paths, results = export.export_workdir(FLAGS.workdir, output_dir, formats, FLAGS.check,
                                         FLAGS.max_per_class)
  for fmt, path in paths.items():
    print(f"{fmt}: {path}")
  for fmt, reason in (results or {}).get("skipped", {}).items():
    print(f"{fmt}: skipped ({reason})")
  if results is not None:
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
  startup.run(main)
