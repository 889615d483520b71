"""How well out-of-distribution detectors separate generated cases from validation X-rays.

  python -m cxr_lab.tools.ood_bench --workdir=workdirs/mobilenet_v2 --workdir=workdirs/cnn_v3 \
      --photos_dir=data/imagenet_photos --output=benchmarks/ood.json

For each workdir and detector kind: fitted on the training split's features, threshold
at the config's validation quantile, then per family (photos, noise, blank, constant,
text, inverted, rotated 90, upside down, quarter crop, blurred) and on test: the
fraction flagged and the AUROC of validation (in) against it (out). Nothing is
fitted on the generated images or on test.
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
flags.DEFINE_integer("n", 64, "Images per generated family.")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
FLAGS = flags.FLAGS


def _table(name: str, result: dict) -> str:
  families = [k for k in next(iter(result.values())) if k not in ("threshold",
                                                                  "validation_flagged")]
  lines = [f"{name}", f"{'detector':<20}{'val flagged':>12}" + "".join(
      f"{f[:12]:>14}" for f in families)]
  for kind, r in result.items():
    lines.append(f"{kind:<20}{r['validation_flagged']:>12.3f}" + "".join(
        f"{r[f]['flagged']:>7.2f}/{r[f]['auroc']:<6.3f}" for f in families))
  return "\n".join(lines) + "\n  (each cell: fraction flagged / AUROC against validation)"


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
    results[workdir] = ood_cases.measure(predictor, train, val, cases, kinds,
                                         fit.ood_settings(config)["accept"], {"test": test})
    print(_table(f"{config.model.name} ({workdir})", results[workdir]), flush=True)
  if FLAGS.output:
    workdir_lib.write_json(FLAGS.output, results)
    print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
  startup.run(main)
