"""What --adapt=auto applies, and from how many images (cxr_lab/adapt_study.py).

  python -m cxr_lab.tools.adapt_study --workdir=workdirs/mobilenet_v2 \
      --output=benchmarks/adapt_auto

Writes adapt_study.json (every draw) and ADAPT.md (the rule's table and its choice). Only
folders generated from the validation split are measured; test/ is reported afterwards by
`evaluate --adapt=auto`, never here.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import os  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from cxr_jax import data as data_lib
from cxr_jax import registry
from cxr_jax import workdir as workdir_lib
from cxr_jax.fits import fit
from cxr_jax.tools import startup
from cxr_lab import adapt_study
from cxr_lab.bench import timing

flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
flags.DEFINE_string("output", "benchmarks/adapt_auto", "Folder for the JSON and the table.")
flags.DEFINE_integer("draws", adapt_study.DRAWS, "Random draws of each folder and size.")
FLAGS = flags.FLAGS


def table(choice: dict, rows: list[dict]) -> str:
  lines = ["| candidate @ N | safe (<= 0.005 lost in distribution and on each class mix) | "
           "mean gain over the nine perturbations |", "|---|---|---|"]
  for key, row in choice["table"].items():
    gain = "–" if row["gain"] is None else f"{row['gain']:+.4f}"
    lines.append(f"| {key} | {'yes' if row['safe'] else 'no'} | {gain} |")
  picked = (f"**{choice['method']}** from **{choice['min_images']}** images" if choice["method"]
            else "**none**: `auto` never adapts")
  return "\n".join([f"Chosen by the rule: {picked}.", "", *lines, "",
                    f"{len(rows)} (draw, candidate) rows; {timing.cpu_model()}."])


def _finished_folders(folder: str) -> dict:
  """{folder name: rows} measured by an earlier, stopped run of the same workdir and draws."""
  out = {}
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
    kept = workdir_lib.read_json(os.path.join(folder, name))
    if kept["workdir"] == FLAGS.workdir and kept["draws"] == FLAGS.draws:
      out[name[:-len(".json")]] = kept["rows"]
  return out


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  workdir_lib.check_output(FLAGS.output, [FLAGS.workdir], "--output", folder=True)
  predictor = registry.load_predictor(FLAGS.workdir)
  fitted = fit.load_or_fit(predictor)
  train, val = data_lib.load_train_val(predictor.config.data)
  generated, reference = adapt_study.folders(train, val)
  ref = fitted.shift.subset(reference)
  os.makedirs(FLAGS.output, exist_ok=True)
  done = _finished_folders(os.path.join(FLAGS.output, "folders"))
  rows = []
  for name, (images, labels) in generated.items():
    path = os.path.join(FLAGS.output, "folders", f"{name}.json")
    if name in done:
      print(f"{name}: kept from {path}", flush=True)
      rows += done[name]
      continue
    print(f"{name}: {len(images)} images", flush=True)
    measured = adapt_study.measure(predictor, ref, name, images, labels,
                                   fitted.calibration["temperature"], draws=FLAGS.draws)
    workdir_lib.write_json(path, {"workdir": FLAGS.workdir, "draws": FLAGS.draws,
                                  "rows": measured})
    rows += measured
  choice = adapt_study.choose(rows)
  workdir_lib.write_json(os.path.join(FLAGS.output, "adapt_study.json"),
                         {"workdir": FLAGS.workdir, "choice": choice, "rows": rows})
  text = table(choice, rows)
  with open(os.path.join(FLAGS.output, "ADAPT.md"), "w") as f:
    f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  startup.run(main)
