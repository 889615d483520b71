"""Calibration and power of the folder-level shift test, and the accuracy estimators' error.

  python -m cxr_lab.tools.shift_bench --workdir=workdirs/mobilenet_v2 \
      --output=benchmarks/folder_shift

Writes `shift_bench.json`, `SHIFT.md` (the tables of docs/folder_shift.md) and
`accuracy_estimates.png` under --output, and for the folder accuracy intervals
`site_bench.json` and `SITE.md` (cxr_lab/site_study.py). Estimators and
margins are chosen on folders generated from validation; test/ and the full-resolution
originals are judged and reported last, never used to choose.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import logging
import os

import numpy as np

from absl import flags

from cxr_jax import data as data_lib
from cxr_jax.report import figures
from cxr_jax.fits import fit
from cxr_jax import registry
from cxr_lab import shift_study
from cxr_lab import site_study
from cxr_jax.tools import startup

flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
flags.DEFINE_string("output", "benchmarks/folder_shift", "Folder for the JSON, tables and plot.")
flags.DEFINE_string("fullres_dir", "data/chest_xray_fullres_sample/train",
                    "In-distribution originals judged as a folder ('' for none).")
flags.DEFINE_integer("trials", 50, "Random sub-folders per size.")
flags.DEFINE_bool("test", True, "Also judge test/ (reported, never used to choose).")
flags.DEFINE_list("studies", ["shift", "site"], "shift: the folder test's false alarms, power "
                  "and point estimators (SHIFT.md); site: the accuracy intervals' candidates, "
                  "choice and coverage (SITE.md, site_bench.json).")
flags.DEFINE_string("photos_dir", "data/imagenet_photos", "Unlabelled photos judged by the site "
                    "study (right only when not estimable; '' for none).")
FLAGS = flags.FLAGS


def _pct(x) -> str:
  return "–" if x is None or x != x else f"{x:.0%}"


def tables(result: dict) -> str:
  """SHIFT.md: false alarms, power by folder size, and the estimators' errors."""
  sizes = [str(s) for s in shift_study.SIZES]
  fa = result["false_alarms"]
  lines = ["## False alarms at alpha = 0.05 (in-distribution folders)", "",
           "| folder | " + " | ".join(f"n={s}" for s in sizes) + " | half (392) |",
           "|---|" + "---|" * (len(sizes) + 1),
           f"| random halves of validation ({fa['trials']} splits) | "
           + " | ".join(_pct(fa.get(s)) for s in sizes) + f" | {_pct(fa['half'])} |"]
  for key, label in (("fullres_train_sample", "40 full-resolution training originals"),
                     ("fullres_same_files_at_224", "the same 40 files, the 224 px copies")):
    if key in result:
      d = result[key]["detection"]
      lines.append(f"| {label} | " + " | ".join(_pct(d.get(s)) for s in sizes)
                   + f" | all {d['all']['n']}: p = {d['all']['p_value']:.2g} |")
  lines += ["", "## Power: fraction of random sub-folders judged shifted", "",
            "| folder | " + " | ".join(f"n={s}" for s in sizes)
            + " | all: p (features MMD effect / outputs KS D) |",
            "|---|" + "---|" * (len(sizes) + 1)]
  rows = dict(result["power_generated"])
  if "test" in result:
    rows = {"**test/** (reference: all validation)": result["test"]["detection"], **rows}
  for name, d in rows.items():
    a = d["all"]
    lines.append(f"| {name} | " + " | ".join(_pct(d.get(s)) for s in sizes)
                 + f" | {a['n']}: p = {a['p_value']:.2g} ({a['features_effect']:.1f} / "
                 f"{a['outputs_effect']:.2f}) |")
  lines += ["", "## Label-free accuracy estimates at the default operating point", "",
            "| folder | n | true | atc | doc | AdaBN disagreement (study only) |",
            "|---|---|---|---|---|---|"]
  estimates = dict(result["estimators_on_generated"])
  if "test" in result:
    estimates["**test/**"] = result["test"]["estimates"]
  for name, r in estimates.items():
    adabn = r.get("adabn_disagreement")
    lines.append(f"| {name} | {r['n']} | {r['true']:.3f} | {r['atc']:.3f} | {r['doc']:.3f} | "
                 + ("–" if adabn is None else f"{adabn:.3f}") + " |")
  choice = result["choice"]
  lines += ["", "By the rule (lower median absolute error on the generated folders): "
            f"**{choice['chosen']}**. " + "; ".join(
                f"{m}: median |error| {s['median_abs_error']:.3f}, mean {s['mean_abs_error']:.3f}, "
                f"within ±0.05 on {s['within_0.05']:.0%}" for m, s in choice["by_method"].items())]
  if "timing_1000" in result:
    t = result["timing_1000"]
    lines += ["", f"Scoring {t['n']} images: {t['scoring_s']:.1f} s; both tests and the "
              f"estimate: {t['tests_s']:.2f} s more ({t['ratio_with_tests']:.2f}x in all)."]
  return "\n".join(lines) + "\n"


def _same_files(fullres, train, val) -> dict:
  """The full-resolution originals' own 224 px copies, as the splits hold them."""
  if fullres is None:
    return {}
  names = {os.path.basename(p) for p in fullres.paths}
  parts = [d.subset([i for i, p in enumerate(d.paths) if os.path.basename(p) in names])
           for d in (train, val)]
  return {"fullres_same_files_at_224": data_lib.DecodedSet(
      np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
      parts[0].paths + parts[1].paths, parts[0].patient_ids + parts[1].patient_ids, [])}


def _site(predictor, fitted, train, val, test, fullres) -> None:
  """The accuracy intervals' study: SITE.md and site_bench.json under --output."""
  photos = (data_lib.load_files([FLAGS.photos_dir], predictor.preprocess).images
            if FLAGS.photos_dir and os.path.isdir(FLAGS.photos_dir) else None)
  val_features = predictor.predict(val.images).features
  result = site_study.run(predictor, fitted, train, val, val_features,
                          {"test": test, "fullres_train_sample": fullres}, photos,
                          progress=logging.info)
  result["workdir"] = FLAGS.workdir
  with open(os.path.join(FLAGS.output, "site_bench.json"), "w") as f:
    json.dump(result, f, indent=1, default=float)
  text = site_study.tables(result)
  with open(os.path.join(FLAGS.output, "SITE.md"), "w") as f:
    f.write(text)
  print(text, flush=True)


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  predictor = registry.load_predictor(FLAGS.workdir)
  config = predictor.config
  train, val = data_lib.load_train_val(config.data)
  fitted = fit.load_or_fit(predictor, validation=val, train=train)
  test = data_lib.load(config.data, "test") if FLAGS.test else None
  fullres = (data_lib.load_folder(FLAGS.fullres_dir, predictor.preprocess)
             if FLAGS.fullres_dir and os.path.isdir(FLAGS.fullres_dir) else None)
  os.makedirs(FLAGS.output, exist_ok=True)
  if "site" in FLAGS.studies:
    _site(predictor, fitted, train, val, test, fullres)
  if "shift" not in FLAGS.studies:
    return
  result = shift_study.run(predictor, fitted.shift, train, val, test, fullres, FLAGS.trials,
                           progress=logging.info, extra=_same_files(fullres, train, val))
  result["workdir"] = FLAGS.workdir
  with open(os.path.join(FLAGS.output, "shift_bench.json"), "w") as f:
    json.dump(result, f, indent=1)
  text = tables(result)
  with open(os.path.join(FLAGS.output, "SHIFT.md"), "w") as f:
    f.write(text)
  chosen = result["choice"]["chosen"]
  points = {n: (r["true"], r[chosen]) for n, r in result["estimators_on_generated"].items()}
  if "test" in result:
    points["test/"] = (result["test"]["estimates"]["true"], result["test"]["estimates"][chosen])
  figures.accuracy_estimates(points, os.path.join(FLAGS.output, "accuracy_estimates.png"))
  print(text)


if __name__ == "__main__":
  startup.run(main)
