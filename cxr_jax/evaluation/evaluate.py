"""Evaluation of a trained workdir on a labelled folder or set (the `evaluate` command's library).

Restores the selected checkpoint (rebuilding model and preprocessing from the config
saved in the workdir), predicts every image (padded, masked last batch) and scores
it at the threshold chosen on validation and at 0.5. Nothing is fitted on the
evaluated images.
"""

from __future__ import annotations

from cxr_jax import data as data_lib
from cxr_jax.evaluation import fit
from cxr_jax.evaluation import metrics as metrics_lib
from cxr_jax.evaluation import predictor as predictor_lib
from cxr_jax.evaluation import scoring


def operating_points(predictor, cal: dict | None = None) -> dict[str, float]:
  """{name: threshold}: the validation-F1 threshold, 0.5, and the calibration's targets."""
  points = {scoring.VALIDATION_THRESHOLD: predictor.threshold, "0.5": 0.5}
  for key, threshold in ((cal or {}).get("sensitivity_thresholds") or {}).items():
    points[f"sensitivity_{key}"] = float(threshold)
  return points


def evaluate_set(predictor, data: data_lib.DecodedSet, description: str,
                 cal: dict | None = None, n_boot: int = 0) -> dict:
  """Metrics of `predictor` on a labelled DecodedSet, with every prediction."""
  probs = predictor.probs(data.images)
  scores = scoring.score_set(data.labels, probs, operating_points(predictor, cal),
                             cal["temperature"] if cal else None, n_boot)
  return {
      "workdir": predictor.workdir,
      "model": predictor.model_name,
      "data_dir": description,
      **scores,
      "skipped_files": data.skipped,
      "n_skipped": len(data.skipped),
      "predictions": scoring.predictions(data.paths, data.labels, probs),
  }


def evaluate_folder(workdir: str, data_dir: str, batch_size: int | None = None,
                    max_per_class: int = 0, calibrate: bool = True) -> dict:
  """Metrics of the workdir's model on `data_dir` (a NORMAL/ + PNEUMONIA/ folder)."""
  predictor = predictor_lib.load_predictor(workdir, batch_size)
  data = data_lib.load_folder(data_dir, predictor.preprocess,
                              max_per_class)
  cal = fit.load_or_fit(predictor)[0] if calibrate else None
  return evaluate_set(predictor, data, data_dir, cal)


def format_result(result: dict) -> str:
  rows = {name[3:].replace("_", " "): m for name, m in result.items()
          if name.startswith("at_")}
  cm = result[f"at_{scoring.VALIDATION_THRESHOLD}"]["confusion_matrix"]
  lines = [f"{result['model']} ({result['workdir']}) on {result['data_dir']}: "
           f"{result['n']} images {result['counts']}, {result['n_skipped']} skipped",
           metrics_lib.format_table(rows),
           f"Confusion matrix at the validation threshold (rows true NORMAL, PNEUMONIA; "
           f"columns predicted): {cm}"]
  if result.get("ece") is not None:
    lines.append(f"ECE {result['ece']:.4f} (after temperature scaling "
                 f"{result['ece_calibrated']:.4f})")
  return "\n".join(lines)
