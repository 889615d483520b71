"""MODEL_CARD.md and model_card.json of a workdir, in the fields of Mitchell et al. (2019).

  write(workdir)   # after training; evaluate and the report call it again

Everything comes from the workdir: config.json, train_summary.json, calibration.json
(temperature, operating points, out-of-distribution threshold), every evaluation
JSON in it (eval_*.json: test and external folders), command.json (how it was
trained) and the code version.
"""

from __future__ import annotations

import datetime
import glob
import os
import subprocess

from cxr_jax import workdir as workdir_lib

CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
COMMAND_FILE = "command.json"
METRICS = ("accuracy", "recall", "specificity", "f1", "roc_auc")


def code_version() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty", "--tags"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _evaluations(workdir: str) -> dict[str, dict]:
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "eval_*.json"))):
    result = workdir_lib.read_json(path)
    name = os.path.basename(path)[len("eval_"):-len(".json")]
    point = result.get("default_operating_point")
    key = (f"at_{'validation_threshold' if point == 'val_f1' else point}" if point
           else "at_validation_threshold")
    out[name] = {"data_dir": result.get("data_dir"), "n": result.get("n"),
                 "counts": result.get("counts"), "operating_point": point,
                 "metrics": {m: (result.get(key) or {}).get(m) for m in METRICS},
                 "ci95": result.get("ci95"),
                 "ood_fraction_flagged": (result.get("ood") or {}).get("fraction_flagged"),
                 "unlike_training": ((result.get("ood") or {}).get("folder_shift") or {}).get(
                     "shifted"),
                 "adapted": (result.get("adapted") or {}).get("at_0.5"),
                 "folder_test": _folder(result.get("folder_test"))}
  return out


def _folder(folder: dict | None) -> dict | None:
  """The folder-level shift test and accuracy interval of an evaluation, or None."""
  if not folder or "p_value" not in folder:
    return None
  answer = folder.get("accuracy_interval") or {}
  return {"shifted": folder["shifted"], "p_value": folder["p_value"],
          "accuracy_estimable": bool(answer.get("estimable")),
          "accuracy_interval": answer.get("interval"), "reason": answer.get("reason"),
          "estimator": answer.get("method")}


def _folder_cell(folder: dict | None, data_dir: str = "FOLDER") -> str:
  if not folder:
    return "–"
  verdict = "⚠ shifted" if folder["shifted"] else "not distinguishable"
  if folder.get("accuracy_estimable"):
    accuracy = "accuracy {:.3f}-{:.3f} without labels".format(*folder["accuracy_interval"])
  else:
    accuracy = ("accuracy not estimable without labels: audit a sample "
                f"(`python -m cxr_jax.tools.audit --workdir=W --data_dir={data_dir} "
                "--budget=60 --output=audit.csv`)")
  return f"{verdict} (p = {folder['p_value']:.2g}); {accuracy}"


def intensity(model_config) -> str:
  """The per-image standardisation inside the model ("none" for kinds without one)."""
  return model_config.intensity if "intensity" in model_config else "none"


INTENDED_USE = {
    "primary": "Research on pediatric chest X-ray classification (NORMAL vs PNEUMONIA) for "
               "children aged 1-5, frontal (PA/AP) views; second-reader experiments.",
    "users": "ML researchers and clinical-AI engineers evaluating the model on their own "
             "images before any clinical study.",
    "out_of_scope": "Not a diagnosis and not a medical device. Not for adults, lateral views, "
                    "other body parts, photos of screens or non-X-ray images; images flagged "
                    "OUT_OF_DISTRIBUTION get no label.",
}
FACTORS = ["patient age (trained on ages 1-5 only)", "hospital and scanner (one hospital: "
           "Guangzhou Women and Children's Medical Center)",
           "pneumonia type (bacterial and viral pooled as PNEUMONIA)",
           "image export (JPEG from the Kaggle release; DICOM windowed to 8 bits)"]
ETHICAL_CONSIDERATIONS = (
    "Trained on one hospital's children: accuracy on adults and other sites is not "
    "established (measured worse than chance on adult X-rays of other hospitals for earlier "
    "models). Errors are asymmetric: the default operating point over-calls pneumonia on "
    "test's NORMAL images more than validation suggests.")
CAVEATS = ["Validation is nearly separable; test (a later collection) is harder: quote test "
           "numbers, not validation ones.",
           "Label-free site adaptation (evaluate --adapt) is reported apart and is not the "
           "model's own performance.",
           "Known failure modes: adults, other hospitals, photos, inverted or rotated images; "
           "the out-of-distribution flag catches many but not all of them."]


def _model_details(workdir: str, config, summary: dict) -> dict:
  return {
      "name": config.name or config.model.name, "architecture": config.model.name,
      "description": config.description, "parameters": summary.get("params"),
      "trained": datetime.datetime.fromtimestamp(os.path.getmtime(workdir_lib.path(
          workdir, workdir_lib.CONFIG_FILE))).strftime("%Y-%m-%d"),
      "code_version": code_version(),
      "command": (workdir_lib.read_json(os.path.join(workdir, COMMAND_FILE)) or {}).get(
          "command"),
      "training": {"selection_metric": config.selection_metric,
                   "best_epoch": summary.get("best_epoch"),
                   "epochs_run": summary.get("epochs_run"),
                   "train_seconds": summary.get("train_seconds")},
      "citation": "Kermany et al. (2018), Cell 172(5):1122-1131 (the data).",
  }


def _metrics(config, cal: dict) -> dict:
  return {"reported": list(METRICS) + ["ECE", "out-of-distribution fraction", "AURC"],
          "operating_point": {"rule": config.operating_point,
                              "thresholds": cal.get("operating_points"),
                              "why": "README.md, 'How the default recipe was chosen'"},
          "calibration": {"temperature": cal.get("temperature"), "val_ece": cal.get("val_ece"),
                          "val_ece_calibrated": cal.get("val_ece_calibrated")},
          "out_of_distribution": cal.get("ood"),
          "uncertainty": "95% percentile bootstrap intervals over images"}


def _training_data(config, summary: dict) -> dict:
  data = config.data
  return {"source": data.data_dir,
          "split": f"Kaggle train/ (+ val/) split by patient ({data.split}): validation "
                   f"{data.val_fraction:.0%} (seed {data.split_seed})",
          "preprocessing": {"image_size": data.image_size, "channels": data.channels,
                            "crop_border": data.crop_border,
                            "intensity": intensity(config.model)},
          "skipped_files": len(summary.get("skipped_files") or [])}


def card(workdir: str) -> dict:
  """The card's content as a dict (model_card.json)."""
  config = workdir_lib.load_config(workdir)
  summary = workdir_lib.read_json(workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE), {})
  cal = workdir_lib.read_json(workdir_lib.path(workdir, workdir_lib.CALIBRATION_FILE), {})
  return {"model_details": _model_details(workdir, config, summary),
          "intended_use": INTENDED_USE, "factors": FACTORS,
          "metrics": _metrics(config, cal), "training_data": _training_data(config, summary),
          "evaluation_data": {"validation": summary.get("val"), **_evaluations(workdir)},
          "ethical_considerations": ETHICAL_CONSIDERATIONS, "caveats": CAVEATS}


def _metrics_table(evaluations: dict) -> list[str]:
  lines = ["| set | images | operating point | accuracy | sensitivity | specificity | F1 | "
           "ROC AUC | flagged OOD | folder vs validation, without labels |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, e in evaluations.items():
    m = e["metrics"]
    cells = [shown(m.get(k)) for k in METRICS]
    flagged = e.get("ood_fraction_flagged")
    flagged_cell = "–" if flagged is None else f"{flagged:.1%}"
    if e.get("unlike_training"):
      flagged_cell += " ⚠ unlike the training data: metrics here do not transfer"
    lines.append(f"| {name} (`{e['data_dir']}`) | {e['n']} | {e.get('operating_point')} | "
                 + " | ".join(cells) + f" | {flagged_cell} | "
                 f"{_folder_cell(e.get('folder_test'), e['data_dir'])} |")
  lines += ["", "The last column is the folder-level two-sample test against validation (MMD on "
            "features, KS on probabilities) and the label-free accuracy interval "
            "(docs/folder_shift.md): the images flagged out of distribution count as anywhere "
            "from wrong to right, the rest get a margin for the measured shift calibrated on "
            "generated folders; wider than ±0.10 it is not estimable without labels and the "
            "site audit answers. A shifted folder's images differ from validation's, which "
            "says the validation numbers may not carry over, not that the model is wrong there."]
  return lines


SIGNIFICANT = 3  # What the card's numbers mean to a reader; model_card.json keeps them all.


def shown(value) -> str:
  """A number to SIGNIFICANT digits; a dict as "name value, ..."; None as "–"."""
  if value is None:
    return "–"
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float):
    return f"{value:.{SIGNIFICANT}g}"
  if isinstance(value, dict):
    return ", ".join(f"{k} {shown(v)}" for k, v in value.items()) or "–"
  if isinstance(value, (list, tuple)):
    return ", ".join(shown(v) for v in value)
  return str(value)


def render(c: dict) -> str:
  d, u, m = c["model_details"], c["intended_use"], c["metrics"]
  evaluations = {k: v for k, v in c["evaluation_data"].items() if k != "validation"}
  val = c["evaluation_data"].get("validation") or {}
  ood = m["out_of_distribution"] or {}
  lines = [f"# Model card: {d['name']}", "",
           f"{d['description']}", "",
           "## Model details", "",
           f"- Architecture: {d['architecture']}; parameters: {d['parameters']}",
           f"- Trained: {d['trained']}; code version: `{d['code_version']}`",
           f"- Command: `{d['command'] or 'not recorded'}`",
           f"- Best epoch {d['training']['best_epoch']} of {d['training']['epochs_run']}, "
           f"selected by validation {d['training']['selection_metric']}",
           f"- Data: {d['citation']}", "",
           "## Intended use", "", f"- Primary: {u['primary']}", f"- Users: {u['users']}",
           f"- Out of scope: {u['out_of_scope']}", "",
           "## Factors", ""] + [f"- {f}" for f in c["factors"]] + [
           "", "## Metrics", "",
           f"- Default operating point: **{m['operating_point']['rule']}** "
           f"({m['operating_point']['why']}); "
           f"all fitted thresholds: {shown(m['operating_point']['thresholds'])}",
           f"- Calibration: temperature {shown(m['calibration']['temperature'])}, validation "
           f"ECE {shown(m['calibration']['val_ece'])} before, "
           f"{shown(m['calibration']['val_ece_calibrated'])} after",
           f"- Out of distribution: {ood.get('kind')} detector on the training split's features, "
           f"threshold {shown(ood.get('threshold'))} ({shown(ood.get('accept'))} of validation "
           "accepted); "
           "flagged images get no label", f"- Uncertainty: {m['uncertainty']}", "",
           "## Training data", "",
           f"- `{c['training_data']['source']}`: {c['training_data']['split']}",
           f"- Preprocessing: {shown(c['training_data']['preprocessing'])}; unreadable files "
           "skipped: "
           f"{c['training_data']['skipped_files']}", "",
           "## Evaluation data and quantitative analyses", "",
           f"Validation (selection only): F1 {shown(val.get('f1'))}, ROC AUC "
           f"{shown(val.get('roc_auc'))}, log loss {shown(val.get('loss'))}.", ""]
  if evaluations:
    lines += _metrics_table(evaluations) + [""]
  else:
    lines += ["No test or external evaluation in this workdir yet: run "
              "`python -m cxr_jax.tools.evaluate --workdir=...`.", ""]
  lines += ["## Ethical considerations", "", c["ethical_considerations"], "",
            "## Caveats and recommendations", ""] + [f"- {x}" for x in c["caveats"]]
  return "\n".join(lines) + "\n"


def write(workdir: str) -> str:
  """Writes MODEL_CARD.md and model_card.json into the workdir; returns the .md path."""
  c = card(workdir)
  workdir_lib.write_json(os.path.join(workdir, CARD_JSON), c)
  path = os.path.join(workdir, CARD_FILE)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      f.write(render(c))
    os.replace(path + ".tmp", path)
  return path
