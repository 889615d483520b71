"""A folder's accuracy without labels: an interval that covers it, or "not estimable".

Partial identification (Manski 2003): the images the out-of-distribution detector flags
(`ood_signals`) have an accuracy nothing here can know, anywhere in [0, 1]. The accepted
images get a label-free estimate a (DoC, Guillory et al. 2021, or ATC, Garg et al. 2022,
against validation's accepted images) with a margin

  h = 1.96 se + c d

se: the sampling error (the folder's Bernoulli outcomes around the estimate, and the
reference's own); d: the shift the folder tests measure on the accepted images beyond
chance (`shift_measures`: the KS statistic of the probabilities above its 95% critical
value, or the MMD of the features above its permutation null's 95% quantile); c: fitted
on labelled folders generated from the training and validation splits by split conformal
prediction over families (`conformal_margin`; Vovk et al. 2005, Lei et al. 2018), so
that the margin grows with the measured shift as much as the generated shifts needed.
The folder's accuracy is then in

  [n_acc lo / n, (n_acc hi + n_ood) / n],   [lo, hi] = [a - h, a + h] clipped to [0, 1],

and wider than WIDTH_LIMIT it is "not estimable without labels": the site audit
(cxr_jax/tools/audit.py) answers instead. The rule and its study: docs/folder_shift.md.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from cxr_jax.fits import folder_shift

Z = 1.96
WIDTH_LIMIT = 0.20  # Wider intervals are "not estimable without labels".
LEVEL = 0.90  # Conformal level of the margin: the share of generated families answered right.
ESTIMATORS = ("doc", "atc")
SHIFT_MEASURES = ("ks", "mmd")
KS_CRITICAL_95 = float(stats.kstwobign.ppf(0.95))  # 1.358: Kolmogorov's asymptotic 95%.
N_PERMUTATIONS = 200
AUDIT_COMMAND = ("python -m cxr_jax.tools.audit --workdir={workdir} --data_dir={folder} "
                 "--budget=60 --output=audit.csv")


def accepted_estimate(ref: folder_shift.Reference, probs, method: str) -> tuple[float, float]:
  """(estimate, standard error) of the accuracy of images with probabilities `probs`;
  `ref` is the reference restricted to its accepted images."""
  probs = np.asarray(probs, np.float64)
  m = len(ref.probs)
  ref_accuracy = folder_shift.accuracy(ref.labels, ref.probs, ref.threshold)
  if method == "doc":
    q = folder_shift.decision_confidence(probs, ref.threshold, ref.temperature)
    q_ref = folder_shift.decision_confidence(ref.probs, ref.threshold, ref.temperature)
    estimate = float(np.mean(q) + ref_accuracy - np.mean(q_ref))
    var = np.mean(q * (1 - q)) / len(q) + np.mean(q_ref * (1 - q_ref)) / m
  elif method == "atc":
    estimate = float(np.mean(folder_shift.decision_margin(probs, ref.threshold) > ref.atc_cut))
    var = estimate * (1 - estimate) / len(probs) + ref_accuracy * (1 - ref_accuracy) / m
  else:
    raise ValueError(f"estimator must be one of {ESTIMATORS}; got {method!r}.")
  return float(np.clip(estimate, 0.0, 1.0)), float(np.sqrt(var))


def ks_excess(ref_probs, probs) -> float:
  """max(0, D - D_crit): the KS statistic beyond its asymptotic 95% critical value."""
  n, m = len(probs), len(ref_probs)
  d = float(stats.ks_2samp(np.asarray(ref_probs), np.asarray(probs)).statistic)
  return max(0.0, d - KS_CRITICAL_95 * math.sqrt((n + m) / (n * m)))


def mmd_excess(ref: folder_shift.Reference, projected, seed: int = 0,
               n_permutations: int = N_PERMUTATIONS) -> float:
  """sqrt(max(0, MMD^2 - its permutation null's 95% quantile)) on projected features."""
  test = folder_shift.mmd_test(ref.features, projected, ref.bandwidth, n_permutations, seed)
  return math.sqrt(max(0.0, test["statistic"] - test["null_quantile_95"]))


def shift_measures(ref: folder_shift.Reference, projected, probs, measures=SHIFT_MEASURES,
                   seed: int = 0) -> dict[str, float]:
  """{measure: d} of accepted images against the reference's accepted images."""
  out = {}
  if "ks" in measures:
    out["ks"] = ks_excess(ref.probs, probs)
  if "mmd" in measures:
    out["mmd"] = mmd_excess(ref, projected, seed)
  return out


def bounds(n: int, n_ood: int, estimate: float, se: float, d: float, c: float
           ) -> tuple[float, float]:
  """The folder's accuracy interval (see the module docstring)."""
  n_acc = n - n_ood
  if n_acc == 0 or not math.isfinite(c * d):
    return 0.0, 1.0
  h = Z * se + c * d
  lo, hi = max(0.0, estimate - h), min(1.0, estimate + h)
  return n_acc * lo / n, (n_acc * hi + n_ood) / n


def estimable(low: float, high: float) -> bool:
  return high - low <= WIDTH_LIMIT


def right(n: int, n_ood: int, estimate: float, se: float, d: float, c: float,
          truth: float | None) -> bool:
  """Covered, or declared not estimable (the only right answer without a truth)."""
  low, high = bounds(n, n_ood, estimate, se, d, c)
  if not estimable(low, high):
    return True
  return truth is not None and low - 1e-12 <= truth <= high + 1e-12


def smallest_margin(n: int, n_ood: int, estimate: float, se: float, d: float,
                    truth: float | None) -> float:
  """The smallest c >= 0 at which the folder's answer is right (inf if none is): the
  interval and the verdict only widen as c grows, so a bisection finds it."""
  if right(n, n_ood, estimate, se, d, 0.0, truth):
    return 0.0
  if d <= 0 or n == n_ood:
    return math.inf
  low, high = 0.0, 1.0
  while not right(n, n_ood, estimate, se, d, high, truth):
    low, high = high, 2 * high
  for _ in range(50):
    mid = (low + high) / 2
    low, high = (low, mid) if right(n, n_ood, estimate, se, d, mid, truth) else (mid, high)
  return high


def conformal_margin(family_scores, level: float = LEVEL) -> float:
  """The ceil((F+1) level)-th smallest of F family scores (inf beyond F): a new family
  exchangeable with them is answered right with probability >= level (split conformal)."""
  scores = np.sort(np.asarray(list(family_scores), np.float64))
  rank = math.ceil((len(scores) + 1) * level)
  return float(scores[rank - 1]) if 0 < rank <= len(scores) else math.inf


# Chosen by the rule of docs/folder_shift.md on the generated folders (benchmarks/site_estimate).
DEFAULT_ESTIMATOR = "doc"
DEFAULT_SHIFT_MEASURE = "ks"
# A folder the folder test calls shifted is not estimable: every generated family was
# flagged or estimated within its sampling error, so the calibrated margin is 0, and a
# shift that leaves the images typical but the model confidently wrong (test/: 0.92-0.97
# for a true 0.82) is one no generated family has (docs/folder_shift.md, the revision).
SHIFT_GATE = True


def judge(settings: dict | None, ref: folder_shift.Reference, features, probs, accepted,
          folder_test: dict | None = None) -> dict:
  """The folder's accuracy interval, or not estimable, from calibration.json's
  "site_estimate" (`settings`), the workdir's reference, the detector's verdicts and the
  folder test's (`folder_shift.shift_test`; a shifted folder is not estimable)."""
  probs, accepted = np.asarray(probs, np.float64), np.asarray(accepted, bool)
  n, n_ood = len(probs), int((~accepted).sum())
  out = {"n": n, "n_flagged": n_ood, "width_limit": WIDTH_LIMIT, "estimable": False,
         "interval": None}
  if not settings or settings.get("margin") is None:
    return {**out, "reason": "no calibrated margin for this workdir"}
  gated = settings.get("shift_gate", SHIFT_GATE) and (folder_test or {}).get("shifted")
  method, measure, c = settings["estimator"], settings["shift_measure"], settings["margin"]
  out.update(method=method, shift_measure=measure, margin=c)
  keep = np.setdiff1d(np.arange(len(ref.probs)), settings.get("reference_flagged", []))
  if n_ood == n:
    return {**out, "bounds": [0.0, 1.0], "reason": "every image is flagged out of distribution"}
  ref_accepted = ref.subset(keep)
  estimate, se = accepted_estimate(ref_accepted, probs[accepted], method)
  d = shift_measures(ref_accepted, ref.project(np.asarray(features)[accepted]),
                     probs[accepted], (measure,))[measure]
  low, high = bounds(n, n_ood, estimate, se, d, c)
  out.update(accepted_estimate=estimate, se=se, shift=d, bounds=[low, high])
  if estimable(low, high) and not gated:
    return {**out, "estimable": True, "interval": [low, high]}
  if n_ood / n > WIDTH_LIMIT:
    reason = (f"{n_ood} of {n} images ({n_ood / n:.0%}) are unlike the training data, and "
              "their accuracy could be anything")
  elif gated:
    reason = (f"the folder as a whole is unlike the validation data, p = "
              f"{folder_test['p_value']:.2g}, and no label-free method can tell how the "
              "model's errors moved with it")
  else:
    reason = ("the shift measured on the accepted images is beyond what a label-free "
              "margin covers")
  return {**out, "reason": reason}


def describe(result: dict, workdir: str = "W", folder: str = "FOLDER") -> str:
  """One sentence: the interval, or not estimable and the audit's command."""
  if result.get("estimable"):
    low, high = result["interval"]
    return (f"Accuracy without labels: between {low:.3f} and {high:.3f} (the "
            f"{result['n_flagged']} flagged images counted as anywhere from wrong to right, "
            "the rest with a margin for the measured shift; docs/folder_shift.md).")
  return (f"Accuracy: not estimable without labels ({result.get('reason', 'no estimate')}). "
          "Label a sample instead: " + AUDIT_COMMAND.format(workdir=workdir, folder=folder))


def add_to_folder_test(folder_test: dict | None, settings: dict | None, ref, features, probs,
                       accepted, workdir: str = "W", folder: str = "FOLDER") -> dict | None:
  """`folder_shift.judge`'s result with "accuracy_interval" and its sentence in "summary"."""
  if folder_test is None or "features" not in folder_test:
    return folder_test
  answer = judge(settings, ref, features, probs, accepted, folder_test)
  folder_test["accuracy_interval"] = answer
  folder_test["summary"] += " " + describe(answer, workdir, folder)
  return folder_test
