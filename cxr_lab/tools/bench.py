"""Speed of the MobileNetV2 classifier: Flax vs Keras, input pipeline, cached features.

  python -m cxr_lab.tools.bench                     # the recipe of make train, then
                                                    # alphas 0.35,1.0 at 224x224, batch 32
  python -m cxr_lab.tools.bench --config=configs/mobilenet.py:freeze3 --alphas=0.35  # a recipe
  python -m cxr_lab.tools.bench --preset=gpu        # batch 256, bfloat16, + 624-image eval
  python -m cxr_lab.tools.bench --alphas=0.35 --steps=5 --warmup=1 --keras=off --json=b.json
  python -m cxr_lab.tools.bench --alphas=0.35 --repeats=11   # the recipe's ratio, tighter
  python -m cxr_lab.tools.bench --depthwise         # the two depthwise forms alone

See `cxr_lab.bench` for what each number measures.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os
import sys

from absl import app
from absl import flags

from cxr_lab.bench import exported as exported_bench
from cxr_lab.bench import keras_peer
from cxr_lab.bench import network
from cxr_lab.bench import suite
from cxr_lab.bench import table
from cxr_jax import ops
from cxr_jax import workdir as workdir_lib
from cxr_jax.tools import config_files
from cxr_jax.tools import startup

flags.DEFINE_enum("preset", "cpu", list(suite.PRESETS), "Defaults for the flags "
                  "below; flags given win.")
flags.DEFINE_string("config", "configs/mobilenet.py", "Training config[:variants] whose "
                    "recipe is timed (its size, batch, trainable layers, BatchNorm, EMA, "
                    "augmentation); the width table uses its augmentation and head phase.")
flags.DEFINE_bool("recipe", True, "Time the config's recipe (roofs, epoch, Keras peer).")
flags.DEFINE_multi_string("compare", [], "More configs[:variants] whose recipes are timed in "
                          "the same run, with their speed-up over --config's.")
flags.DEFINE_list("alphas", None, "Widths.")
flags.DEFINE_integer("image_size", None, "Square input side.")
flags.DEFINE_integer("batch_size", None, "Batch size.")
flags.DEFINE_integer("steps", None, "Timed steps.")
flags.DEFINE_integer("warmup", None, "Untimed steps after compiling.")
flags.DEFINE_enum("dtype", None, list(network.DTYPES), "Backbone compute dtype.")
flags.DEFINE_enum("keras", None, list(keras_peer.KERAS_MODES), "Also time Keras.")
flags.DEFINE_integer("repeats", suite.REPEATS, "Flax and Keras chunks of --steps steps each, "
                     "alternated, for the recipe's Flax/Keras ratio (median and spread).")
flags.DEFINE_enum("ops", "auto", list(ops.IMPLS), "cxr_jax.ops implementation policy.")
flags.DEFINE_bool("cached_features", None, "Time the cached-feature head phase.")
flags.DEFINE_integer("cf_images", None, "Training images of the projected head phase "
                     "(default: the config's share of the Kermany train/ split).")
flags.DEFINE_integer("cf_epochs", None, "Head-phase epochs (default: the config's).")
flags.DEFINE_integer("eval_images", None, "> 0: time evaluating that many.")
flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size.")
flags.DEFINE_integer("pipeline_images", None, "Images of the input-pipeline timing.")
flags.DEFINE_bool("depthwise", False, "Only time the two depthwise forms.")
flags.DEFINE_string("export_dir", None, "Only time a workdir's exported files (the output of "
                    "tools/export) against its JAX function; --workdir names the workdir.")
flags.DEFINE_string("workdir", None, "With --export_dir or --ood_overhead: the workdir.")
flags.DEFINE_integer("ood_overhead", 0, "> 0: only time scoring that many test images with "
                     "and without the out-of-distribution score (--workdir).")
flags.DEFINE_string("json", "", "Also write the result dict here.")
FLAGS = flags.FLAGS


def _setting(name: str):
  value = getattr(FLAGS, name)
  return suite.PRESETS[FLAGS.preset][name] if value is None else value


def _ood_overhead(n: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cxr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from cxr_jax.fits import fit  # pylint: disable=g-import-not-at-top
  from cxr_jax import registry
  if not FLAGS.workdir:
    raise app.UsageError("--ood_overhead needs --workdir.")
  predictor = registry.load_predictor(FLAGS.workdir, tta=False)
  detector = fit.load_or_fit(predictor).detector
  test = data_lib.load(predictor.config.data, "test")
  images = np.concatenate([test.images] * (-(-n // len(test))))[:n]
  return exported_bench.bench_ood_overhead(predictor, detector, images)


def _exported() -> dict:
  from cxr_jax import export  # pylint: disable=g-import-not-at-top
  from cxr_jax.fits import fit  # pylint: disable=g-import-not-at-top
  from cxr_jax import registry
  if not FLAGS.workdir:
    raise app.UsageError("--export_dir needs --workdir.")
  predictor = registry.load_predictor(FLAGS.workdir, tta=False)
  fitted = fit.load_or_fit(predictor)
  serving = export.serving_function(predictor, fitted)
  names = {"onnx": "model.onnx", "saved_model": "saved_model", "tflite": "model.tflite",
           "tflite_int8": "model_int8.tflite"}
  runtimes = {k: export.Runtime(os.path.join(FLAGS.export_dir, v)) for k, v in names.items()
              if os.path.exists(os.path.join(FLAGS.export_dir, v))}
  # The network's one view, as the exported files hold it: the model with the CPU kernels
  # of cxr_jax.ops, then the detector (`predict` with --notta).
  def predictor_fn(images):
    out = predictor.predict(images)
    return out.probs, fitted.detector.score(out.features, images)

  return exported_bench.bench_exported(serving, {"jax_predictor": predictor_fn, **runtimes},
                                     serving.shape, FLAGS.batch_size or 32)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.json:  # Checked before the timings, which a late failure would lose.
    workdir_lib.check_output(FLAGS.json, [FLAGS.workdir, FLAGS.export_dir], "--json")
  if FLAGS.depthwise:
    result = {"depthwise": network.depthwise_timings()}
    print(json.dumps(result, indent=2))
  elif FLAGS.export_dir:
    result = {"exported": _exported()}
    print(json.dumps(result, indent=2))
  elif FLAGS.ood_overhead:
    result = {"ood_overhead": _ood_overhead(FLAGS.ood_overhead)}
    print(json.dumps(result, indent=2))
  else:
    alphas = _setting("alphas")
    alphas = alphas.split(",") if isinstance(alphas, str) else alphas
    result = suite.run(
        config_files.load(FLAGS.config), alphas=[float(a) for a in alphas if a],
        image_size=_setting("image_size"), batch_size=_setting("batch_size"),
        steps=_setting("steps"), warmup=_setting("warmup"), dtype=_setting("dtype"),
        keras=_setting("keras"), ops_impl=FLAGS.ops,
        cached_features=_setting("cached_features"), cf_images=FLAGS.cf_images,
        cf_epochs=FLAGS.cf_epochs, eval_images=_setting("eval_images"),
        eval_batch_size=FLAGS.eval_batch_size, pipeline_images=_setting("pipeline_images"),
        recipe=FLAGS.recipe, other_recipes=[config_files.load(c) for c in FLAGS.compare],
        repeats=FLAGS.repeats,
        log=functools.partial(print, file=sys.stderr, flush=True))
    result["settings"]["preset"] = FLAGS.preset
    print(table.format_table(result), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  startup.run(main)
