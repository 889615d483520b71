"""How well the folder-level shift test and the accuracy estimates work (`tools/shift_bench`).

Everything the test and the estimators are judged and chosen on comes from the training
and validation splits: validation is split at random into a reference half and a
judged half, and the labelled generated folders (acquisition perturbations, x-ray OOD
families, changed class mixes) are made from the judged half. test/ is scored last, with
the whole validation split as reference, as in use, and is never used to choose.

Rule, fixed before any number (docs/folder_shift.md): the default estimator is the one of
`folder_shift.ESTIMATORS` with the lower median absolute error over the labelled
generated folders.
"""

from __future__ import annotations

import time

import numpy as np

from cxr_jax.inference import adaptation
from cxr_jax.fits import folder_shift
from cxr_jax.fits import generated
from cxr_jax.fits import perturbations

SIZES = (25, 50, 100, 200)
ADABN_COLUMN = True  # Report the AdaBN-disagreement estimate beside the candidates.






def _rate(flags) -> float:
  return float(np.mean(flags)) if len(flags) else float("nan")


def detection_rates(ref, features, probs, sizes=SIZES, trials: int = 50, seed: int = 0,
                    n_permutations: int = 500) -> dict:
  """{size: fraction of random sub-folders judged shifted at ref's alpha}, and "all"."""
  rng = np.random.default_rng(seed)
  out = {}
  for size in sizes:
    if size >= len(probs):
      continue
    flags = []
    for t in range(trials):
      i = rng.choice(len(probs), size, replace=False)
      flags.append(folder_shift.shift_test(ref, features[i], probs[i], seed=t,
                                           n_permutations=n_permutations)["shifted"])
    out[str(size)] = _rate(flags)
  whole = folder_shift.shift_test(ref, features, probs, seed=seed)
  out["all"] = {"n": int(len(probs)), "p_value": whole["p_value"], "shifted": whole["shifted"],
                "features_p": whole["features"]["p_value"],
                "features_effect": whole["features"]["effect_size"],
                "outputs_p": whole["outputs"]["p_value"],
                "outputs_effect": whole["outputs"]["effect_size"]}
  return out


def false_alarms(full_ref, trials: int = 50, seed: int = 0) -> dict:
  """Random halves of validation: one half the reference, the other (and its sub-folders)
  judged; the test is a permutation test, so this is its size under no shift."""
  rng = np.random.default_rng(seed)
  n = len(full_ref.probs)
  halves, by_size = [], {str(s): [] for s in SIZES if s < n // 2}
  features_only, outputs_only = [], []
  for t in range(trials):
    order = rng.permutation(n)
    ref, judged = full_ref.subset(order[: n // 2]), order[n // 2:]
    result = folder_shift.shift_test(ref, full_ref.features[judged], full_ref.probs[judged],
                                     seed=t, n_permutations=500, projected=True)
    halves.append(result["shifted"])
    features_only.append(result["features"]["p_value"] < folder_shift.ALPHA)
    outputs_only.append(result["outputs"]["p_value"] < folder_shift.ALPHA)
    for size in by_size:
      i = rng.choice(judged, int(size), replace=False)
      by_size[size].append(folder_shift.shift_test(
          ref, full_ref.features[i], full_ref.probs[i], seed=t, n_permutations=500,
          projected=True)["shifted"])
  return {"trials": trials, "half": _rate(halves), "half_features_alone": _rate(features_only),
          "half_outputs_alone": _rate(outputs_only),
          **{size: _rate(flags) for size, flags in by_size.items()}}


def estimator_errors(ref, folders_scored: dict) -> dict:
  """{folder: {"true", estimator: estimate}} at ref's operating point."""
  out = {}
  for name, (probs, labels) in folders_scored.items():
    row = {"n": int(len(labels)),
           "true": folder_shift.accuracy(labels, probs, ref.threshold)}
    for method in folder_shift.ESTIMATORS:
      est = folder_shift.estimate_accuracy(ref, probs, method, n_boot=200)
      row[method] = est["estimate"]
      row[f"{method}_ci95"] = est["ci95"]
    out[name] = row
  return out


def adabn_disagreement(predictor, ref, images: np.ndarray) -> float:
  """Share of answers at ref's threshold that AdaBN to `images` changes (study-only column:
  it needs a second pass over the folder, past the 2x scoring budget of the product)."""
  source = predictor.predict(images).probs
  adapted = adaptation.adapt(predictor, images, "adabn", 1.0)["probs"]  # Own scale.
  return float(np.mean((source >= ref.threshold) != (adapted >= ref.threshold)))


def add_adabn_column(predictor, ref, val_images, rows: dict, images: dict) -> None:
  """rows[name]["adabn_disagreement"]: validation accuracy minus the rise in disagreement."""
  base = adabn_disagreement(predictor, ref, val_images)
  val_accuracy = folder_shift.accuracy(ref.labels, ref.probs, ref.threshold)
  for name, x in images.items():
    rows[name]["adabn_disagreement"] = val_accuracy - (
        adabn_disagreement(predictor, ref, x) - base)


def choose_estimator(errors: dict) -> dict:
  """The rule: lower median absolute error over the generated folders."""
  summary = {}
  for method in folder_shift.ESTIMATORS:
    abs_err = np.array([abs(r[method] - r["true"]) for r in errors.values()])
    summary[method] = {"median_abs_error": float(np.median(abs_err)),
                       "mean_abs_error": float(np.mean(abs_err)),
                       "within_0.05": float(np.mean(abs_err <= 0.05))}
  chosen = min(folder_shift.ESTIMATORS, key=lambda m: summary[m]["median_abs_error"])
  return {"by_method": summary, "chosen": chosen}


def timing(predictor, ref, images: np.ndarray) -> dict:
  """Seconds to score `images` without and with both folder tests and the estimate."""
  predictor.predict(images[:8])  # Compile first.
  start = time.perf_counter()
  out = predictor.predict(images)
  scored = time.perf_counter() - start
  start = time.perf_counter()
  folder_shift.judge(ref, out.features, out.probs)
  tests = time.perf_counter() - start
  return {"n": int(len(images)), "scoring_s": scored, "tests_s": tests,
          "ratio_with_tests": (scored + tests) / scored}


def _score(predictor, images):
  out = predictor.predict(images)
  return out.features, out.probs


def run(predictor, full_ref, train, val, test=None, fullres=None, trials: int = 50,
        seed: int = 0, progress=print, extra=None) -> dict:
  """The whole study (see the module docstring); `full_ref` is the workdir's reference."""
  severities = perturbations.Severities.fit(train.images)
  order = np.random.default_rng(seed).permutation(len(val))
  half_ref, judged = full_ref.subset(order[: len(val) // 2]), order[len(val) // 2:]
  progress(f"Generating labelled folders from {len(judged)} validation images.")
  folders = generated.labelled_folders(val.images[judged], val.labels[judged], severities, seed)
  scored = {name: (*_score(predictor, x), y) for name, (x, y) in folders.items()}
  errors = estimator_errors(half_ref, {n: (p, y) for n, (_, p, y) in scored.items()})
  if ADABN_COLUMN:
    add_adabn_column(predictor, half_ref, val.images[order[: len(val) // 2]], errors,
                     {n: x for n, (x, _) in folders.items()})
  result = {"severities": {"low": severities.low, "high": severities.high,
                           "resample_factor": severities.resample_factor,
                           "jpeg_quality": perturbations.JPEG_QUALITY},
            "estimators_on_generated": errors, "choice": choose_estimator(errors)}
  progress("False alarms on random halves of validation.")
  result["false_alarms"] = false_alarms(full_ref, trials, seed)
  progress("Power on the generated folders.")
  result["power_generated"] = {name: detection_rates(half_ref, f, p, trials=max(10, trials // 3),
                                                     seed=seed)
                               for name, (f, p, _) in scored.items()}
  judged_sets = {"test": test, "fullres_train_sample": fullres, **(extra or {})}
  for name, data in judged_sets.items():
    if data is None or not len(data):
      continue
    progress(f"Judging {name} ({len(data)} images) against the whole validation split.")
    features, probs = _score(predictor, data.images)
    estimates = estimator_errors(full_ref, {name: (probs, data.labels)})
    if ADABN_COLUMN:
      add_adabn_column(predictor, full_ref, val.images, estimates, {name: data.images})
    result[name] = {"detection": detection_rates(full_ref, features, probs, trials=trials,
                                                 seed=seed), "estimates": estimates[name]}
  if test is not None:
    images = np.concatenate([val.images, test.images])[:1000]
    result["timing_1000"] = timing(predictor, full_ref, images)
  return result
