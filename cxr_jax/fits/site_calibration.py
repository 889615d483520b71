"""The margin of `site_estimate`, calibrated on folders generated from validation.

Validation is split at random into a reference half and a judged half; the detector's
thresholds and the reference (DoC offset, ATC cut, MMD bandwidth) are refitted on the
reference half, so the judged half is new to them. Families of labelled folders are made
from the judged half (`generated.labelled_folders` with the far-shift families), each
as the whole folder and SUBFOLDERS random sub-folders of SUBFOLDER images; 20 random
re-splits of validation are the in-distribution family. Each folder becomes a `Record`
(sizes, flagged count, truth, estimates, shift measures); `family_scores`,
`calibrate` and `leave_one_family_out` do the rest (rules: docs/folder_shift.md).
Nothing here sees test/.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cxr_jax.fits import folder_shift
from cxr_jax.fits import ood_signals
from cxr_jax.fits import perturbations
from cxr_jax.fits import generated
from cxr_jax.fits import site_estimate

IN_DISTRIBUTION = "validation_halves"
N_PERMUTATIONS = 500  # Of each calibration folder's folder test (the product's: 1,000).
SUBFOLDER = 100
SUBFOLDERS = 2
HALVES = 20


@dataclasses.dataclass
class Record:
  """One folder: what the interval needs, per estimator and shift measure."""
  family: str
  name: str
  n: int
  n_ood: int
  truth: float | None  # Accuracy at the reference's operating point; None: unlabelled.
  estimates: dict  # estimator -> (estimate, se) of the accepted images
  shifts: dict  # shift measure -> d of the accepted images
  shifted: bool = False  # The folder test's verdict on the whole folder.

  def bounds(self, method: str, measure: str, c: float) -> tuple[float, float]:
    if self.n == self.n_ood:
      return 0.0, 1.0
    estimate, se = self.estimates[method]
    return site_estimate.bounds(self.n, self.n_ood, estimate, se, self.shifts[measure], c)

  def smallest_margin(self, method: str, measure: str, gate: bool = True) -> float:
    if self.n == self.n_ood or (gate and self.shifted):
      return 0.0  # Not estimable whatever c: nothing accepted, or the folder is shifted.
    estimate, se = self.estimates[method]
    return site_estimate.smallest_margin(self.n, self.n_ood, estimate, se,
                                         self.shifts[measure], self.truth)


@dataclasses.dataclass
class Judged:
  """A reference (its accepted images) and the detector thresholds it was fitted with."""
  ref: folder_shift.Reference  # Restricted to its accepted images.
  thresholds: np.ndarray  # The detector's per-signal thresholds, fitted on the reference.
  whole: folder_shift.Reference  # Every image of it: the folder test's reference.


def reference(full_ref, raw_val: np.ndarray, index: np.ndarray, accept: float) -> Judged:
  """The reference made of validation images `index`: thresholds, then its accepted ones."""
  thresholds = ood_signals.common_thresholds(raw_val[index], accept)
  accepted = np.all(raw_val[index] <= thresholds, axis=1)
  return Judged(full_ref.subset(np.asarray(index)[accepted]), thresholds,
                full_ref.subset(np.asarray(index)))


def record(judged: Judged, family: str, name: str, projected, probs, labels, raw,
           methods, measures, seed: int = 0) -> Record:
  """A folder's Record: `projected` features, `probs`, `labels` (None: unlabelled) and
  `raw` per-signal detector scores of its images."""
  accepted = np.all(np.asarray(raw) <= judged.thresholds, axis=1)
  probs = np.asarray(probs, np.float64)
  shifted = folder_shift.shift_test(judged.whole, projected, probs, seed=seed,
                                    n_permutations=N_PERMUTATIONS, projected=True)["shifted"]
  truth = (None if labels is None
           else folder_shift.accuracy(labels, probs, judged.ref.threshold))
  estimates, shifts = {}, {}
  if accepted.any():
    estimates = {m: site_estimate.accepted_estimate(judged.ref, probs[accepted], m)
                 for m in methods}
    shifts = site_estimate.shift_measures(judged.ref, np.asarray(projected)[accepted],
                                          probs[accepted], measures, seed)
  return Record(family, name, len(probs), int((~accepted).sum()), truth, estimates, shifts,
                bool(shifted))


def _subfolders(n: int, rng) -> list[np.ndarray]:
  whole = [np.arange(n)]
  if n <= SUBFOLDER:
    return whole
  return whole + [np.sort(rng.choice(n, SUBFOLDER, replace=False)) for _ in range(SUBFOLDERS)]


def generated_records(predictor, detector, judged: Judged, images, labels, severities,
                      methods, measures, seed: int = 0, progress=None) -> list[Record]:
  """Records of every generated family made from labelled `images` (the judged half)."""
  rng = np.random.default_rng(seed)
  folders = generated.labelled_folders(images, labels, severities, seed, far=True)
  out = []
  for family, (x, y) in folders.items():
    if progress:
      progress(f"Scoring the generated family {family} ({len(x)} images).")
    scored = predictor.predict(x)
    raw = detector.raw_scores(scored.features, x)
    projected = judged.ref.project(scored.features)
    for k, i in enumerate(_subfolders(len(x), rng)):
      out.append(record(judged, family, family if k == 0 else f"{family}/{k}", projected[i],
                        scored.probs[i], y[i], raw[i], methods, measures, seed + k))
  return out


def halves_records(full_ref, raw_val, accept: float, methods, measures, seed: int = 0,
                   halves: int = HALVES) -> list[Record]:
  """In distribution: random splits of validation, one half the reference, one judged."""
  rng = np.random.default_rng(seed + 1)
  n = len(full_ref.probs)
  out = []
  for h in range(halves):
    order = rng.permutation(n)
    judged = reference(full_ref, raw_val, order[: n // 2], accept)
    j = order[n // 2:]
    out.append(record(judged, IN_DISTRIBUTION, f"{IN_DISTRIBUTION}/{h}", full_ref.features[j],
                      full_ref.probs[j], full_ref.labels[j], raw_val[j], methods, measures, h))
  return out


def records(predictor, detector, full_ref, train, val, val_features,
            methods=site_estimate.ESTIMATORS, measures=site_estimate.SHIFT_MEASURES,
            unlabelled: dict | None = None, seed: int = 0, progress=None) -> list[Record]:
  """Every calibration folder's Record (the module docstring); `unlabelled`: {family:
  images} judged too, never calibrated on (right only when declared not estimable)."""
  raw_val = detector.raw_scores(val_features, val.images)
  order = np.random.default_rng(seed).permutation(len(val))
  half, judged_half = order[: len(val) // 2], order[len(val) // 2:]
  judged = reference(full_ref, raw_val, half, detector.accept)
  severities = perturbations.Severities.fit(train.images)
  out = generated_records(predictor, detector, judged, val.images[judged_half],
                          val.labels[judged_half], severities, methods, measures, seed, progress)
  out += halves_records(full_ref, raw_val, detector.accept, methods, measures, seed)
  for family, images in (unlabelled or {}).items():
    scored = predictor.predict(images)
    out.append(record(judged, family, family, judged.ref.project(scored.features),
                      scored.probs, None, detector.raw_scores(scored.features, images),
                      methods, measures, seed))
  return out


def family_scores(recs: list[Record], method: str, measure: str, gate: bool = True
                  ) -> dict[str, float]:
  """{family: the largest smallest-margin of its labelled folders}."""
  scores = {}
  for r in recs:
    if r.truth is not None:
      scores[r.family] = max(scores.get(r.family, 0.0),
                             r.smallest_margin(method, measure, gate))
  return scores


def calibrate(recs: list[Record], method: str, measure: str,
              level: float = site_estimate.LEVEL, gate: bool = True) -> float:
  """The product's margin c: conformal over every labelled family."""
  return site_estimate.conformal_margin(family_scores(recs, method, measure, gate).values(),
                                        level)


def leave_one_family_out(recs: list[Record], method: str, measure: str,
                         level: float = site_estimate.LEVEL, gate: bool = True
                         ) -> dict[str, float]:
  """{family: c calibrated without it} (unlabelled families: c of all labelled ones)."""
  scores = family_scores(recs, method, measure, gate)
  out = {}
  for family in dict.fromkeys(r.family for r in recs):
    others = [s for f, s in scores.items() if f != family]
    out[family] = site_estimate.conformal_margin(others, level)
  return out


def outcome(r: Record, method: str, measure: str, c: float, gate: bool = True) -> dict:
  """The answer a folder gets at margin c, and whether it is right."""
  low, high = r.bounds(method, measure, c)
  ok = site_estimate.estimable(low, high) and not (gate and r.shifted)
  covered = r.truth is not None and low - 1e-12 <= r.truth <= high + 1e-12
  return {"family": r.family, "name": r.name, "n": r.n, "n_ood": r.n_ood, "truth": r.truth,
          "low": low, "high": high, "estimable": ok, "covered": covered,
          "right": (not ok) or covered, "c": c if math.isfinite(c) else None,
          "shifted": r.shifted}


CANDIDATES = tuple((m, s) for m in site_estimate.ESTIMATORS for s in site_estimate.SHIFT_MEASURES)


def judge_candidate(recs: list[Record], method: str, measure: str,
                    level: float = site_estimate.LEVEL, gate: bool = True) -> dict:
  """Every folder's answer with its family left out of the margin, and their summary;
  gate: a folder the folder test calls shifted is not estimable."""
  held_out = leave_one_family_out(recs, method, measure, level, gate)
  rows = [outcome(r, method, measure, held_out[r.family], gate) for r in recs]
  labelled = [o for o in rows if o["truth"] is not None]
  widths = [o["high"] - o["low"] if o["estimable"] else 1.0 for o in labelled]
  far = [o for o in labelled if o["family"].startswith("far_")]
  return {"method": method, "measure": measure, "gate": gate,
          "margin_all": calibrate(recs, method, measure, level, gate),
          "right": float(np.mean([o["right"] for o in labelled])),
          "far_all_right": all(o["right"] for o in far),
          "mean_width": float(np.mean(widths)), "folders": rows}


def choose(judged: list[dict], goal: float = site_estimate.LEVEL) -> dict:
  """The rule of docs/folder_shift.md: among candidates right on >= goal of the labelled
  folders and on every far-shift folder, the smallest mean width; else the most right.
  Ties keep CANDIDATES' order (min and max return the first)."""
  qualified = [j for j in judged if j["right"] >= goal and j["far_all_right"]]
  best = (min(qualified, key=lambda j: j["mean_width"]) if qualified
          else max(judged, key=lambda j: j["right"]))
  return {"method": best["method"], "measure": best["measure"], "qualified": bool(qualified)}


def fit_margin(predictor, detector, full_ref, train, val, val_features,
               method: str = site_estimate.DEFAULT_ESTIMATOR,
               measure: str = site_estimate.DEFAULT_SHIFT_MEASURE) -> dict:
  """What `site_estimate.judge` needs of a workdir (calibration.json's "site_estimate")."""
  recs = records(predictor, detector, full_ref, train, val, val_features, (method,), (measure,))
  margin = calibrate(recs, method, measure, gate=site_estimate.SHIFT_GATE)
  flagged = detector.score(val_features, val.images) > detector.threshold
  return {"estimator": method, "shift_measure": measure, "shift_gate": site_estimate.SHIFT_GATE,
          "margin": margin if math.isfinite(margin) else None,
          "level": site_estimate.LEVEL, "width_limit": site_estimate.WIDTH_LIMIT,
          "families": len(family_scores(recs, method, measure)),
          "reference_flagged": [int(i) for i in np.flatnonzero(flagged)]}
