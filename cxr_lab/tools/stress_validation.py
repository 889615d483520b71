"""Stress validation of trained workdirs: validation under the acquisition perturbations.

  python -m cxr_lab.tools.stress_validation --workdir=workdirs/mobilenet_v2 \
      --output=benchmarks/stress/mobilenet_v2.json

Per workdir: validation's log loss, ECE and accuracy at the default operating point,
clean and under each family of `cxr_jax/fits/perturbations.py` (severities from the
training split's 5th-95th percentiles), with the mean and the worst family. test/ is
never read.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import os

from absl import flags

from cxr_jax import data as data_lib
from cxr_jax.fits import fit
from cxr_jax.fits import perturbations
from cxr_jax import registry
from cxr_lab import stress
from cxr_jax.tools import startup

flags.DEFINE_multi_string("workdir", None, "Trained workdir; repeatable.", required=True)
flags.DEFINE_string("output", "", "Also write the results as JSON here.")
FLAGS = flags.FLAGS


def _row(name: str, result: dict) -> str:
  c, m, w = result["clean"], result["mean"], result["worst"]
  return (f"| {name} | {c['log_loss']:.4f} | {m['log_loss']:.4f} | {w['log_loss']:.4f} "
          f"({w['log_loss_family']}) | {c['ece']:.4f} | {m['ece']:.4f} | {w['ece']:.4f} | "
          f"{c['accuracy']:.3f} | {m['accuracy']:.3f} | {w['accuracy']:.3f} |")


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  results = {}
  for workdir in FLAGS.workdir:
    predictor = registry.load_predictor(workdir)
    train, val = data_lib.load_train_val(predictor.config.data)
    cal = fit.load_or_fit(predictor, validation=val, train=train).calibration
    threshold = fit.operating_point(cal, predictor.config)[1]
    results[workdir] = stress.stress_scores(predictor, val,
                                            perturbations.Severities.fit(train.images),
                                            threshold)
  print("| workdir | log loss clean | mean | worst (family) | ECE clean | mean | worst | "
        "accuracy clean | mean | worst |\n|---|---|---|---|---|---|---|---|---|---|")
  for workdir, result in results.items():
    print(_row(workdir, result))
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  startup.run(main)
