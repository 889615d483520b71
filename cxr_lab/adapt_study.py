"""What `--adapt=auto` applies, and from how many images: the rule of docs/results.md
("--adapt=auto"), on folders generated from the validation split, never test/.

Validation is split at random into a reference half (the folder test's reference) and a
judged half; the folders are the judged half itself (in distribution), its nine
acquisition perturbations and its two class mixes. Each folder is drawn at SIZES images
DRAWS times (and whole); on each draw the folder test gives its verdict and every candidate
adapts to the draw's images. The accuracy at 0.5 adapted minus unadapted, under the gate
(adapt only a shifted folder of at least N images), decides.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.fits import folder_shift
from cxr_jax.fits import perturbations
from cxr_jax.inference import adaptation
from cxr_jax.fits import generated

CANDIDATES = ("adabn+prior", "balanced+prior")  # A, then B: a tie goes to A.
SIZES = (25, 50, 100, 200)
DRAWS = 20
MAX_COST = 0.005  # Accuracy adaptation may cost in distribution and under label shift.
IN_DISTRIBUTION = "validation_half"
MIXES = tuple(generated.class_mixes(np.array([0, 1]), np.random.default_rng(0)))


def folders(train, val, seed: int = 0) -> tuple[dict, np.ndarray]:
  """({name: (images, labels)}, reference indices of val) as the plan lists them."""
  order = np.random.default_rng(seed).permutation(len(val))
  reference, judged = order[: len(val) // 2], order[len(val) // 2:]
  images, labels = val.images[judged], val.labels[judged]
  rng = np.random.default_rng(seed)
  out = {IN_DISTRIBUTION: (images, labels)}
  severities = perturbations.Severities.fit(train.images)
  out.update({name: (x, labels) for name, x in
              perturbations.make_families(images, severities, seed).items()})
  out.update({name: (images[i], labels[i]) for name, i in
              generated.class_mixes(labels, rng).items()})
  return out, reference


def _accuracy(labels, probs) -> float:
  return float(np.mean((np.asarray(probs) >= 0.5) == (np.asarray(labels) == 1)))


def measure(predictor, ref, name: str, images, labels, temperature: float, seed: int = 0,
            sizes=SIZES, draws: int = DRAWS) -> list[dict]:
  """One row per (draw, candidate): the verdict, the accuracy unadapted and adapted."""
  out = predictor.predict(images)
  rng = np.random.default_rng(seed)
  rows = []
  plan = [(s, d) for s in sizes if s < len(images) for d in range(draws)]
  for size, draw in plan + [(len(images), 0)]:
    index = (rng.choice(len(images), size, replace=False) if size < len(images)
             else np.arange(len(images)))
    shifted = folder_shift.shift_test(ref, out.features[index], out.probs[index], seed=draw,
                                      n_permutations=500, projected=False)["shifted"]
    own = _accuracy(labels[index], out.probs[index])
    for method in CANDIDATES:
      adapted = adaptation.adapt(predictor, images[index], method, temperature)["probs"]
      rows.append({"folder": name, "size": int(size), "whole": size == len(images),
                   "draw": draw, "shifted": bool(shifted), "method": method, "own": own,
                   "adapted": _accuracy(labels[index], adapted)})
  return rows


def gated_change(rows: list[dict], method: str, n_min: int, folder_names) -> float | None:
  """Mean accuracy change under the gate (adapt a shifted folder of >= n_min images), over
  the draws of size >= n_min of `folder_names`; None if there are none."""
  changes = [(r["adapted"] - r["own"]) if r["shifted"] else 0.0 for r in rows
             if r["method"] == method and r["folder"] in folder_names and r["size"] >= n_min]
  return float(np.mean(changes)) if changes else None


def _safe(rows, method: str, n_min: int) -> bool:
  """No more than MAX_COST lost, on average, at each size >= n_min of the in-distribution
  folder and of each class mix."""
  for name in (IN_DISTRIBUTION,) + MIXES:
    for size in sorted({r["size"] for r in rows if r["folder"] == name and r["size"] >= n_min}):
      sized = [r for r in rows if r["size"] == size]
      change = gated_change(sized, method, n_min, (name,))
      if change is not None and change < -MAX_COST:
        return False
  return True


def choose(rows: list[dict]) -> dict:
  """The plan's rule: the smallest N at which a candidate is safe and gains on the
  perturbations; there, the safe candidate with the larger gain (a tie: the first)."""
  perturbed = tuple(perturbations.FAMILIES)
  table = {}
  for n_min in SIZES:
    for method in CANDIDATES:
      table[f"{method}@{n_min}"] = {"safe": _safe(rows, method, n_min),
                                    "gain": gated_change(rows, method, n_min, perturbed)}
  for n_min in SIZES:
    ok = [m for m in CANDIDATES if table[f"{m}@{n_min}"]["safe"]
          and (table[f"{m}@{n_min}"]["gain"] or 0.0) > 0]
    if ok:
      best = max(ok, key=lambda m: (table[f"{m}@{n_min}"]["gain"], -CANDIDATES.index(m)))
      return {"method": best, "min_images": n_min, "table": table}
  return {"method": None, "min_images": None, "table": table}
