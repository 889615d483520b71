"""How well out-of-distribution detectors separate generated cases from validation X-rays.

  python -m cxr_lab.tools.ood_bench --workdir=workdirs/mobilenet_v2 --workdir=workdirs/cnn_v3 \
      --photos_dir=data/imagenet_photos --output=benchmarks/ood.json

For each workdir and detector kind: the features detector fitted on the training
split's features, the raw-image thumbnail signal, and both combined (`ood_signals`, what
the product uses), thresholds at the config's validation quantile; then per family
(`ood_cases.FAMILIES`: photos, noise, blank, constant, text, the x-ray families and the
far-shift families), on test and on the full-resolution originals: the fraction flagged
and the AUROC of validation (in) against it (out), and the combined detector's rate on
validation halves at thresholds from the other half. Nothing is fitted on the generated
images, on test or on the originals.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import os

from absl import flags

from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax.fits import fit
from cxr_lab import ood_cases
from cxr_jax import registry
from cxr_jax.tools import startup

flags.DEFINE_multi_string("workdir", None, "Trained workdir; repeatable.", required=True)
flags.DEFINE_list("kinds", ["mahalanobis", "knn"], "Detectors to compare, of those the "
                  "model's features take (PCA + logistic regression: its own reconstruction "
                  "error).")
flags.DEFINE_string("photos_dir", "data/imagenet_photos", "Natural photos ('' for none).")
flags.DEFINE_string("fullres_dir", "data/chest_xray_fullres_sample/train",
                    "Original-resolution training files, scored as a set ('' for none).")
flags.DEFINE_integer("n", 64, "Images per generated family.")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
FLAGS = flags.FLAGS


_NOT_SETS = ("threshold", "validation_flagged", "validation_heldout")


def _table(name: str, result: dict) -> str:
  """Markdown: a row per family or set, a column per detector (fraction flagged / AUROC)."""
  detectors = list(result)
  sets = [k for k in result[detectors[0]] if k not in _NOT_SETS]
  lines = [f"{name}", "", "| family | n | " + " | ".join(detectors) + " |",
           "|---|---|" + "---|" * len(detectors),
           "| validation (thresholds fitted on it) | – | " + " | ".join(
               f"{result[d]['validation_flagged']:.3f}" for d in detectors) + " |"]
  heldout = [result[d].get("validation_heldout") for d in detectors]
  if any(heldout):
    lines.append("| validation half, thresholds from the other half (mean / max of "
                 f"{next(h for h in heldout if h)['splits']} splits) | – | " + " | ".join(
                     "–" if h is None else f"{h['mean']:.3f} / {h['max']:.3f}" for h in heldout)
                 + " |")
  for s in sets:
    lines.append(f"| {s} | {result[detectors[0]][s]['n']} | " + " | ".join(
        f"{result[d][s]['flagged']:.2f} / {result[d][s]['auroc']:.3f}" for d in detectors) + " |")
  return "\n".join(lines) + "\n\n(each cell: fraction flagged / AUROC against validation)\n"


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  if FLAGS.output:  # Checked before the work, which a late failure would lose.
    workdir_lib.check_output(FLAGS.output, [*FLAGS.workdir, FLAGS.photos_dir])
  results = {}
  for workdir in FLAGS.workdir:
    predictor = registry.load_predictor(workdir)
    config = predictor.config
    train, val = data_lib.load_train_val(config.data)
    test = data_lib.load(config.data, "test")
    photos = FLAGS.photos_dir if FLAGS.photos_dir and os.path.isdir(FLAGS.photos_dir) else None
    cases = ood_cases.make_cases(val.images, FLAGS.n, photos, predictor.preprocess)
    # The asked detectors its features take; else its own (PCA's reconstruction error).
    supported = predictor.kind.supports.ood_detectors
    kinds = [k for k in FLAGS.kinds if k in supported] or list(supported)
    # Keyed by workdir: the seeds of one recipe share its model name.
    extra = {"test": test}
    if FLAGS.fullres_dir and os.path.isdir(FLAGS.fullres_dir):
      extra["fullres_originals"] = data_lib.load_folder(FLAGS.fullres_dir, predictor.preprocess)
    results[workdir] = ood_cases.measure(predictor, train, val, cases, kinds,
                                         fit.ood_settings(config)["accept"], extra)
    print(_table(f"{config.model.name} ({workdir})", results[workdir]), flush=True)
  if FLAGS.output:
    workdir_lib.write_json(FLAGS.output, results)
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
  startup.run(main)
