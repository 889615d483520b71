"""The acquisition-cue report: what separates the classes without looking at the lungs.

  python -m cxr_jax.tools.cue_report --workdir=workdirs/mobilenet_v2 --output=benchmarks/cues
  python -m cxr_jax.tools.cue_report --workdir=workdirs/mobilenet_v2 --data_dir=/data/site_b

For the workdir's training and validation splits (and a labelled NORMAL/ + PNEUMONIA/
folder with --data_dir): each cue's per-class median and its single-cue ROC AUC, and the
model's sensitivity to each cue (the share of answers that change when a validation
image takes the other class's training median of it). Writes CUES.md, cue_report.json
and one histogram figure per set under --output. test/ is never read.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import os

from absl import flags

from cxr_jax import data as data_lib
from cxr_jax.fits import cues as cues_lib
from cxr_jax.report import figures
from cxr_jax.fits import fit
from cxr_jax import registry
from cxr_jax.tools import startup

flags.DEFINE_string("workdir", None, "Trained workdir (its config names the data).",
                    required=True)
flags.DEFINE_string("data_dir", "", "Also a labelled NORMAL/ + PNEUMONIA/ folder.")
flags.DEFINE_string("output", "benchmarks/cues", "Folder for CUES.md, JSON and figures.")
flags.DEFINE_bool("model", True, "Measure the model's sensitivity to each cue.")
FLAGS = flags.FLAGS


def _auc(v) -> str:
  return "–" if v is None else f"{v:.2f}"


def tables(report: dict) -> str:
  names = list(report["sets"])
  first = report["sets"][names[0]]
  lines = ["## Single-cue ROC AUC for PNEUMONIA (0.5: no information) and class medians", "",
           "| cue | " + " | ".join(f"AUC {n}" for n in names)
           + f" | median NORMAL ({names[0]}) | median PNEUMONIA ({names[0]}) |",
           "|---|" + "---|" * (len(names) + 2)]
  for cue in first:
    medians = [(first[cue][c] or {}).get("median") for c in ("NORMAL", "PNEUMONIA")]
    lines.append(f"| {cue} | " + " | ".join(_auc(report["sets"][n][cue]["auc"]) for n in names)
                 + " | " + " | ".join("–" if m is None or m != m else f"{m:.4g}"
                                      for m in medians) + " |")
  for name, sens in (report.get("sensitivity") or {}).items():
    lines += ["", f"## Answers that change on {name} when a cue takes the other class's "
              "training median", "", "| cue | all | NORMAL | PNEUMONIA |", "|---|---|---|---|"]
    for cue, s in sens.items():
      lines.append(f"| {cue} | {s['changed']:.1%} | "
                   + " | ".join("–" if s[f"changed_{c}"] is None else f"{s[f'changed_{c}']:.1%}"
                                for c in ("NORMAL", "PNEUMONIA")) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  predictor = registry.load_predictor(FLAGS.workdir)
  train, val = data_lib.load_train_val(predictor.config.data)
  sets = {"train": train, "validation": val}
  if FLAGS.data_dir:
    sets[os.path.basename(os.path.normpath(FLAGS.data_dir))] = data_lib.load_folder(
        FLAGS.data_dir, predictor.preprocess)
  threshold = None
  if FLAGS.model:
    cal = fit.load_or_fit(predictor, validation=val, train=train).calibration
    threshold = fit.operating_point(cal, predictor.config)[1]
  report = cues_lib.cue_report(sets, predictor if FLAGS.model else None, threshold)
  os.makedirs(FLAGS.output, exist_ok=True)
  for name, d in sets.items():
    figures.cue_distributions(report["cues"][name], d.labels, os.path.join(FLAGS.output, f"cues_{name}.png"),
                              title=f"Acquisition cues by class: {name}")
  with open(os.path.join(FLAGS.output, "cue_report.json"), "w") as f:
    json.dump({k: v for k, v in report.items() if k != "cues"}, f, indent=1)
  text = tables(report)
  with open(os.path.join(FLAGS.output, "CUES.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  startup.run(main)
