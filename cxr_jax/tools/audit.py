"""A site audit with a few labels: pick the images to label, then estimate from the labels.

  python -m cxr_jax.tools.audit --workdir=workdirs/mobilenet_v2 --data_dir=/data/site \
      --budget=60 --output=audit.csv
  # fill the label column of audit.csv (NORMAL or PNEUMONIA, or 0/1), then
  python -m cxr_jax.tools.audit --workdir=workdirs/mobilenet_v2 --labels=audit.csv \
      [--json=audit_result.json]

The first command scores every image below --data_dir (recursively; unreadable files
are skipped and counted), picks --budget of them stratified on the model's probability
(cxr_jax/fits/audit.py) and writes the sheet (path, stratum, probability,
predicted, label) and, beside it, `<sheet>.design.json`: the strata sizes, their
predicted labels, the threshold and the model they were made with. The second prints
accuracy, sensitivity and specificity of the whole folder at the workdir's default
operating point with 95% intervals.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import csv  # pylint: disable=g-import-not-at-top,wrong-import-position
import os

from absl import flags
import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax.data.splits import CLASS_NAMES
from cxr_jax.fits import audit
from cxr_jax.fits import fit
from cxr_jax import registry
from cxr_jax.metrics import scoring
from cxr_jax.tools import startup

DEFAULT_BUDGET = 60
DEFAULT_OUTPUT = "audit.csv"
DESIGN_FORMAT = "cxr_jax site audit 1"

flags.DEFINE_string("workdir", None, "Trained workdir whose model is audited.", required=True)
flags.DEFINE_string("data_dir", None, "Folder of the site's images (searched recursively): "
                    "pick the images to label.")
flags.DEFINE_string("labels", None, "The filled sheet (its .design.json beside it): estimate.")
flags.DEFINE_integer("budget", DEFAULT_BUDGET, "How many images to label.")
flags.DEFINE_string("output", DEFAULT_OUTPUT, "Sheet to write with --data_dir.")
flags.DEFINE_integer("seed", 0, "Seed of the random picks within strata.")
flags.DEFINE_string("json", None, "With --labels: also write the estimates here.")
FLAGS = flags.FLAGS


def _check_sheet_output(output: str, inputs: list[str]) -> None:
  """Refuses an output that is an input, or a sheet already being filled in."""
  workdir_lib.check_output(output, inputs)
  workdir_lib.check_output(audit.design_path(output), inputs, "--output's design file")
  if os.path.exists(output):
    try:
      with open(output, newline="", encoding="utf-8-sig") as f:
        filled = sum(bool((row.get("label") or "").strip())
                     for row in csv.DictReader(f))
    except (OSError, UnicodeDecodeError):
      filled = 0
    if filled:
      raise ValueError(f"--output={output} already holds {filled} labels; choose another "
                       "--output (or move it away) rather than overwrite them.")


def _list_folder(data_dir: str, budget: int) -> list[str]:
  if not data_dir or not os.path.isdir(data_dir):
    raise ValueError(f"--data_dir={data_dir} is not a folder.")
  files = data_lib.expand_paths([data_dir])
  if not files:
    raise ValueError(f"--data_dir={data_dir}: no image files found (searched recursively).")
  if budget < 2 * audit.MIN_LABELS_PER_STRATUM:
    raise ValueError(f"--budget={budget}: label at least {2 * audit.MIN_LABELS_PER_STRATUM}.")
  if budget > len(files):
    raise ValueError(f"--budget={budget} is more than the {len(files)} image files in "
                     f"--data_dir={data_dir}.")
  return files


def _score(workdir: str, files: list[str]) -> dict:
  """The readable images' calibrated and own-scale probabilities, and the operating point."""
  predictor = registry.load_predictor(workdir)
  fitted = fit.load_or_fit(predictor)
  decoded = data_lib.load_files(files, predictor.preprocess)
  point, raw_threshold = fit.operating_point(fitted.calibration, predictor.config)
  temperature = fitted.calibration["temperature"]
  raw = (np.asarray(predictor.predict(decoded.images).probs, np.float64) if len(decoded)
         else np.zeros(0))
  return {"paths": list(decoded.paths), "skipped": decoded.skipped, "raw": raw,
          "probs": scoring.calibrate_probs(raw, temperature) if len(raw) else raw,
          "point": point, "raw_threshold": float(raw_threshold),
          "threshold": float(scoring.calibrate_probs([raw_threshold], temperature)[0]),
          "model": predictor.model_name, "source": fit.source(predictor)}


def pick(workdir: str, data_dir: str, budget: int, output: str, seed: int) -> dict:
  """Scores the folder, picks the images and writes the sheet and its design file."""
  files = _list_folder(data_dir, budget)
  _check_sheet_output(output, [workdir, data_dir, *files])
  scored = _score(workdir, files)
  if budget > len(scored["paths"]):
    raise ValueError(f"--budget={budget} is more than the {len(scored['paths'])} readable "
                     f"images of --data_dir={data_dir} ({len(scored['skipped'])} unreadable).")
  chosen = audit.select(scored["raw"], budget, scored["raw_threshold"], seed)
  sizes, predicted = audit.design(chosen.strata, scored["raw"], scored["raw_threshold"])
  paths = [scored["paths"][i] for i in chosen.indices]
  rows = sorted(({"path": paths[j], "stratum": int(chosen.strata[i]),
                  "probability": f"{scored['probs'][i]:.6g}",
                  "predicted": CLASS_NAMES[predicted[chosen.strata[i]]]}
                 for j, i in enumerate(chosen.indices)), key=lambda r: r["path"])
  design = {"format": DESIGN_FORMAT, "workdir": os.path.abspath(workdir),
            "model": scored["model"], "workdir_source": scored["source"],
            "operating_point": scored["point"], "raw_threshold": scored["raw_threshold"],
            "threshold": scored["threshold"], "data_dir": os.path.abspath(data_dir),
            "n_images": len(scored["paths"]), "n_unreadable": len(scored["skipped"]),
            "budget": budget, "seed": seed, "strata_sizes": sizes.tolist(),
            "strata_predicted": predicted.tolist(),
            "picked": {r["path"]: r["stratum"] for r in rows}}
  workdir_lib.write_json(audit.design_path(output), design)
  audit.write_sheet(output, rows)
  return design


def _load_design(csv_path: str, workdir: str) -> dict:
  """The sheet's design file, refused when it was made for another model or threshold."""
  if not os.path.isfile(csv_path):
    raise ValueError(f"--labels={csv_path} is not a file.")
  path = audit.design_path(csv_path)
  design = workdir_lib.read_json(path)
  if not isinstance(design, dict) or design.get("format") != DESIGN_FORMAT:
    raise ValueError(f"{path} is missing or not an audit design file; --labels needs the one "
                     "written beside the sheet by --data_dir.")
  predictor = registry.load_predictor(workdir)
  config = predictor.config
  if (design["workdir_source"] != fit.source(predictor)
      or design["operating_point"] != fit.operating_point_name(config)):
    raise ValueError(f"--labels={csv_path} was made with the model of {design['workdir']} "
                     f"({design['model']}, operating point {design['operating_point']}), not "
                     f"with --workdir={workdir}'s; pick the images again with this workdir.")
  return design


def assess(workdir: str, csv_path: str) -> dict:
  """The estimates from a filled sheet (its unlabelled rows counted, not used)."""
  design = _load_design(csv_path, workdir)
  labels, unlabelled = audit.read_sheet(csv_path, design["picked"])
  strata = [design["picked"][p] for p in labels]
  result = audit.estimate(design["strata_sizes"], np.asarray(strata, np.int64),
                          np.asarray(list(labels.values()), np.int64),
                          design["strata_predicted"])
  return {**result, "sheet": csv_path, "n_picked": len(design["picked"]),
          "n_unlabelled": len(unlabelled), **{k: design[k] for k in (
              "workdir", "model", "operating_point", "threshold", "data_dir", "n_unreadable")}}


def format_pick(design: dict, output: str, workdir: str) -> str:
  sizes, predicted = np.array(design["strata_sizes"]), np.array(design["strata_predicted"])
  return "\n".join([
      f"Scored {design['n_images']} images of {design['data_dir']} "
      f"({design['n_unreadable']} unreadable, left out) with {design['model']}: "
      f"{int(sizes[predicted == 1].sum())} predicted PNEUMONIA at the "
      f"{design['operating_point']} operating point (threshold {design['threshold']:.4f}).",
      f"Picked {design['budget']} to label in {len(sizes)} strata of the probability.",
      f"Wrote {output} and {audit.design_path(output)} (keep them together).",
      f"Next: fill the label column of {output} with NORMAL or PNEUMONIA (or 0/1), read from "
      "the images and not from the predicted column, then run",
      f"  python -m cxr_jax.tools.audit --workdir={workdir} --labels={output}"])


def format_assess(r: dict) -> str:
  lines = [f"Audit of {r['data_dir']} ({r['n_images']} images) with {r['model']} at the "
           f"{r['operating_point']} operating point (threshold {r['threshold']:.4f}): used "
           f"{r['n_labelled']} labels of {r['n_picked']} picked ({r['n_unlabelled']} unlabelled, "
           "left out)."]
  lines += ["  " + audit.describe(m, r[m], r["level"]) for m in audit.METRICS]
  if r["collapsed_strata"]:
    lines.append(f"  Strata with too few labels were joined to a neighbour: "
                 f"{r['collapsed_strata']} (their rates assumed alike).")
  lines.append("Estimates are for the whole folder (stratified, Korn-Graubard intervals); "
               "unlabelled rows are assumed missing at random.")
  return "\n".join(lines)


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  if bool(FLAGS.data_dir) == bool(FLAGS.labels):
    raise ValueError("Give --data_dir=FOLDER (pick the images to label) or --labels=SHEET "
                     "(estimate from the filled sheet), one of the two.")
  if FLAGS.data_dir:
    design = pick(FLAGS.workdir, FLAGS.data_dir, FLAGS.budget, FLAGS.output, FLAGS.seed)
    print(format_pick(design, FLAGS.output, FLAGS.workdir))
    return
  if FLAGS.json:
    workdir_lib.check_output(FLAGS.json, [FLAGS.workdir, FLAGS.labels], "--json")
  result = assess(FLAGS.workdir, FLAGS.labels)
  print(format_assess(result))
  if FLAGS.json:
    workdir_lib.write_json(FLAGS.json, result)
    print(f"Wrote {FLAGS.json}")


if __name__ == "__main__":
  startup.run(main)
