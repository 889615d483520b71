"""Evaluation of a trained workdir on a labelled folder or set (the `evaluate` command's library).

Restores the selected model (rebuilding model and preprocessing from the config saved
in the workdir), predicts every image (padded, masked last batch) and scores it at
every operating point fitted on validation (and 0.5), on all images and on the ones
the out-of-distribution detector accepts, with risk-coverage curves. Nothing is
fitted on the evaluated images.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import model_card
from cxr_jax import workdir as workdir_lib
from cxr_jax.inference import adaptation
from cxr_jax.fits import fit
from cxr_jax.fits import folder_shift
from cxr_jax.metrics import classification as metrics_lib
from cxr_jax.fits import ood
from cxr_jax.fits import ood_signals
from cxr_jax.fits import site_estimate
from cxr_jax import registry
from cxr_jax.metrics import scoring
from cxr_jax.metrics import selective


def point_key(name: str) -> str:
  """The result key of an operating point named as in calibration.json ("val_f1" -> ...)."""
  return f"at_{scoring.VALIDATION_THRESHOLD}" if name == "val_f1" else f"at_{name}"


def operating_points(predictor, cal: dict | None = None) -> dict[str, float]:
  """{name: threshold}: the validation-F1 threshold first, then 0.5 and every fitted rule."""
  points = {scoring.VALIDATION_THRESHOLD: predictor.threshold, "0.5": 0.5}
  for key, threshold in ((cal or {}).get("operating_points") or {}).items():
    if key not in ("val_f1", "0.5"):
      points[key] = float(threshold)
  for key, threshold in ((cal or {}).get("sensitivity_thresholds") or {}).items():
    points.setdefault(f"sensitivity_{key}", float(threshold))
  return points


def _ood_summary(fitted, scores: np.ndarray, signals: list[str]) -> dict:
  flagged = ~fitted.detector.in_distribution(scores)
  return {"kind": fitted.detector.kind, "threshold": fitted.detector.threshold,
          "signals": list(getattr(fitted.detector, "signals", ("features",))),
          "flagged_by": ood_signals.counts(signals),
          "accept": fitted.detector.accept, "n_flagged": int(flagged.sum()),
          "folder_shift": fitted.detector.folder_verdict(~flagged),
          "fraction_flagged": float(flagged.mean()) if len(flagged) else 0.0,
          "score_quantiles": {str(q): float(np.quantile(scores, q))
                              for q in (0.05, 0.25, 0.5, 0.75, 0.95)} if len(scores) else {}}


def _accepted_scores(labels, probs, accepted, points, temperature) -> dict | None:
  if accepted.sum() == 0:
    return None
  return scoring.score_set(labels[accepted], probs[accepted], points, temperature)


def adapted_scores(predictor, data: data_lib.DecodedSet, requested: str, temperature: float,
                   shifted: bool | None = None) -> dict:
  """Label-free adaptation to the set (its images only), then its metrics at 0.5.

  requested: --adapt's value; "auto" is resolved with the folder test's verdict `shifted`.
  """
  method, reason = adaptation.resolve(requested, len(data), shifted)
  out = {"requested": requested, "method": method, "reason": reason}
  if method == "none":
    return out
  adapted = adaptation.adapt(predictor, data.images, method, temperature)
  return {**out, "estimated_prior": adapted["prior"], "source_prior": adapted["source_prior"],
          "adabn_applied": adapted["adabn"],
          **scoring.score_set(data.labels, adapted["probs"], {"0.5": 0.5})}


def evaluate_set(predictor, data: data_lib.DecodedSet, description: str,
                 fitted: fit.Fitted | None = None, n_boot: int = 0, adapt: str = "none"
                 ) -> dict:
  """Metrics of `predictor` on a labelled DecodedSet, with every prediction.

  adapt: a label-free adaptation (adaptation.CHOICES) also reported, under "adapted".
  """
  out = predictor.predict(data.images)
  probs = out.probs
  cal = fitted.calibration if fitted else None
  points = operating_points(predictor, cal)
  temperature = cal["temperature"] if cal else None
  result = {
      "workdir": predictor.workdir,
      "model": predictor.model_name,
      "data_dir": description,
      **scoring.score_set(data.labels, probs, points, temperature, n_boot),
      "skipped_files": data.skipped,
      "n_skipped": len(data.skipped),
      "predictions": scoring.predictions(data.paths, data.labels, probs),
  }
  if fitted is not None:
    name, threshold = fit.operating_point(cal, predictor.config)
    scores, signals = ood_signals.score_and_signal(fitted.detector, out.features, data.images)
    accepted = fitted.detector.in_distribution(scores)
    result["default_operating_point"] = name
    result["ood"] = _ood_summary(fitted, scores, signals)
    if fitted.shift is not None:  # The folder as a whole against validation, without labels.
      result["folder_test"] = site_estimate.add_to_folder_test(
          folder_shift.judge(fitted.shift, out.features, probs),
          cal.get("site_estimate"), fitted.shift, out.features, probs, accepted,
          predictor.workdir, description)
      truth = folder_shift.accuracy(data.labels, probs, fitted.shift.threshold)
      result["folder_test"]["estimated_accuracy"]["true"] = truth
      if "accuracy_interval" in result["folder_test"]:
        result["folder_test"]["accuracy_interval"]["true"] = truth
    result["accepted"] = _accepted_scores(data.labels, probs, accepted, points, temperature)
    result["risk_coverage"] = selective.curves(data.labels, probs, threshold, scores)
    for row, score, ok, signal in zip(result["predictions"], scores, accepted, signals):
      row.update(ood_score=float(score), in_distribution=bool(ok), ood_signal=signal)
  if adapt != "none":
    shifted = (result.get("folder_test") or {}).get("shifted")
    result["adapted"] = adapted_scores(predictor, data, adapt, temperature or 1.0, shifted)
  return result


def evaluate_folder(workdir: str, data_dir: str, batch_size: int | None = None,
                    max_per_class: int = 0, calibrate: bool = True, tta: bool | None = None,
                    adapt: str = "none") -> dict:
  """Metrics of the workdir's model on `data_dir` (a NORMAL/ + PNEUMONIA/ folder)."""
  predictor = registry.load_predictor(workdir, batch_size, tta=tta)
  data = data_lib.load_folder(data_dir, predictor.preprocess, max_per_class)
  fitted = fit.load_or_fit(predictor) if calibrate else None
  result = evaluate_set(predictor, data, data_dir, fitted, adapt=adapt)
  result["tta"] = predictor.one_view is not predictor
  return result


def evaluate_to_file(workdir: str, data_dir: str, output: str, batch_size: int | None = None,
                     tta: bool | None = None, adapt: str = "none"
                     ) -> tuple[dict, str | None]:
  """evaluate_folder written to `output`: (result, the model card refreshed, if any).

  The output is checked before any work (a read-only workdir must not lose a finished
  evaluation; an input must not be overwritten); writing into the workdir holds its lock.
  """
  workdir_lib.load_config(workdir)  # Not a workdir: refused before anything is created.
  workdir_lib.check_output(output, inputs=(workdir, data_dir))
  inside = workdir_lib.is_inside(output, workdir)
  with workdir_lib.writer_lock(workdir) if inside else contextlib.nullcontext():
    result = evaluate_folder(workdir, data_dir, batch_size, tta=tta, adapt=adapt)
    workdir_lib.write_json(output, result)
    in_workdir = os.path.dirname(os.path.realpath(output)) == os.path.realpath(workdir)
    return result, model_card.write(workdir) if in_workdir else None


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
  if result.get("ood"):
    o, rc = result["ood"], result["risk_coverage"]
    by_signal = ood_signals.describe_counts(o.get("flagged_by"))
    lines.append(f"Out of distribution ({' + '.join(o.get('signals') or [o['kind']])}, "
                 f"threshold {o['threshold']:.4g}): {o['n_flagged']}/{result['n']} flagged "
                 f"({o['fraction_flagged']:.1%}{by_signal}).")
    warning = o.get("folder_shift") and ood.shift_warning(o["n_flagged"], result["n"],
                                                          o["folder_shift"])
    if warning:
      lines.append(warning)
    accepted = result.get("accepted")
    if accepted:
      m = accepted[f"at_{result['default_operating_point']}"]
      lines.append(f"On the {accepted['n']} accepted images at the default operating point "
                   f"({result['default_operating_point']}): accuracy {m['accuracy']:.4f}, "
                   f"F1 {m['f1']:.4f}, ROC AUC "
                   f"{m['roc_auc'] if m['roc_auc'] is None else round(m['roc_auc'], 4)}.")
    lines.append(f"Risk-coverage AURC (lower is better): by confidence "
                 f"{rc['by_confidence']['aurc']:.4f}, by OOD score "
                 f"{rc['by_ood_score']['aurc']:.4f}.")
  if result.get("folder_test"):
    answer = result["folder_test"].get("accuracy_interval") or {}
    lines.append(result["folder_test"]["summary"])
    if answer.get("true") is not None:
      said = ("the label-free interval {:.3f}-{:.3f}".format(*answer["interval"])
              if answer.get("estimable") else "the label-free answer, not estimable")
      lines.append(f"With this folder's labels: accuracy {answer['true']:.3f} at the default "
                   f"operating point, against {said}.")
  if result.get("adapted") and result["adapted"]["method"] == "none":
    lines.append(f"Label-free adaptation not applied ({result['adapted']['reason']}).")
  elif result.get("adapted"):
    a = result["adapted"]
    m = a["at_0.5"]
    prior = ("" if a["estimated_prior"] is None
             else f", estimated pneumonia rate {a['estimated_prior']:.3f}")
    lines.append(f"Label-free adaptation ({a['method']}, {a['reason']}{prior}; AdaBN "
                 f"{'applied' if a['adabn_applied'] else 'not applied'}), reported apart: "
                 f"accuracy {m['accuracy']:.4f}, F1 {m['f1']:.4f}, sensitivity {m['recall']:.4f}, "
                 f"specificity {m['specificity']:.4f}, ROC AUC {m['roc_auc'] or float('nan'):.4f} "
                 "at 0.5.")
  return "\n".join(lines)
