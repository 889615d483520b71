"""Evaluation of a trained workdir on any NORMAL/ + PNEUMONIA/ folder.

  python -m cxr_jax.evaluate --workdir=workdirs/cnn_v3 --data_dir=data/chest_xray/test \
      --output=workdirs/cnn_v3/test_metrics.json

Restores the best checkpoint (rebuilding model and preprocessing from the config
saved in the workdir), predicts every image (padded, masked last batch), prints a
table and writes JSON with the metrics at the threshold chosen on validation and
at 0.5 for reference. Nothing is fitted on the evaluated folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import numpy as np
from absl import app
from absl import flags

from cxr_jax import checkpoints
from cxr_jax import inference
from cxr_jax import log_setup
from cxr_jax import input_pipeline
from cxr_jax import metrics as metrics_lib
from cxr_jax import models


@dataclasses.dataclass
class Predictor:
  """A trained model of a workdir, ready to score uint8 images of its input size."""
  config: object
  predict: Callable[[input_pipeline.DecodedSet], np.ndarray]  # -> PNEUMONIA probabilities
  threshold: float  # Maximises validation F1; chosen at training time.
  meta: dict


def load_predictor(workdir: str, batch_size: int | None = None) -> Predictor:
  config = checkpoints.load_config(workdir)
  batch_size = batch_size or config.eval_batch_size
  if config.model.name in models.SKLEARN_MODELS:
    from cxr_jax import sklearn_models  # pylint: disable=g-import-not-at-top
    pipeline, meta = sklearn_models.load(workdir)
    predict = lambda data: pipeline.predict_proba(sklearn_models.flatten(data.images))[:, 1]
    return Predictor(config, predict, float(meta["threshold"]), meta)
  variables, meta = checkpoints.restore_best(workdir)
  model = models.create_model(config.model)
  predict_fn = inference.make_predict_fn(model)
  variables = jax.device_put(variables)
  predict = lambda data: inference.predict_probs(predict_fn, variables, data, batch_size)
  return Predictor(config, predict, float(meta["threshold"]), meta)


def evaluate_folder(workdir: str, data_dir: str, batch_size: int | None = None,
                    max_per_class: int = 0) -> dict:
  """Metrics of the workdir's best model on `data_dir` (a NORMAL/ + PNEUMONIA/ folder)."""
  predictor = load_predictor(workdir, batch_size)
  data_config = predictor.config.data
  data = input_pipeline.load_folder(data_dir, data_config.image_size, data_config.channels,
                                    max_per_class)
  probs = predictor.predict(data)
  return {
      "workdir": workdir,
      "model": predictor.config.model.name,
      "data_dir": data_dir,
      "n": len(data),
      "counts": data.class_counts(),
      "at_validation_threshold": metrics_lib.binary_metrics(data.labels, probs,
                                                            predictor.threshold),
      "at_0.5": metrics_lib.binary_metrics(data.labels, probs, 0.5),
      "skipped_files": data.skipped,
      "n_skipped": len(data.skipped),
      "predictions": [{"path": p, "label": int(l), "prob": float(q)}
                      for p, l, q in zip(data.paths, data.labels, probs)],
  }


def format_result(result: dict) -> str:
  table = metrics_lib.format_table({
      "validation threshold": result["at_validation_threshold"],
      "threshold 0.5": result["at_0.5"]})
  cm = result["at_validation_threshold"]["confusion_matrix"]
  lines = [f"{result['model']} ({result['workdir']}) on {result['data_dir']}: "
           f"{result['n']} images {result['counts']}, {result['n_skipped']} skipped",
           table,
           f"Confusion matrix at the validation threshold (rows true NORMAL, PNEUMONIA; "
           f"columns predicted): {cm}"]
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; called only when run as a program, so importing defines none."""
  flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).")
  flags.DEFINE_string("data_dir", None, "Folder with NORMAL/ and PNEUMONIA/; default: the "
                      "test/ split of the config's data_dir.")
  flags.DEFINE_string("output", None, "Where to write the metrics JSON; default "
                      "<workdir>/eval_<folder name>.json.")
  flags.DEFINE_integer("batch_size", None, "Evaluation batch size; default from the config.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  log_setup.setup()
  workdir = FLAGS.workdir
  data_dir = FLAGS.data_dir or os.path.join(checkpoints.load_config(workdir).data.data_dir, "test")
  result = evaluate_folder(workdir, data_dir, FLAGS.batch_size)
  output = FLAGS.output or os.path.join(
      workdir, f"eval_{os.path.basename(os.path.normpath(data_dir))}.json")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(result, f, indent=2)
  print(format_result(result))
  print(f"Wrote {output}")


if __name__ == "__main__":
  from cxr_jax import malloc_tuning  # pylint: disable=g-import-not-at-top
  malloc_tuning.reexec_with_tunables()
  define_flags()
  app.run(main)
