"""A site audit with a few labels: which images to label, and what the labels say.

  chosen = select(probs, budget, threshold, seed)       # .indices to label, .strata of all
  sizes, predicted = design(chosen.strata, probs, threshold)
  result = estimate(sizes, chosen.strata[labelled], labels, predicted)
  result["accuracy"]   # {"estimate", "ci", "n_labels", "cannot_tell", "reason", ...}

`write_sheet` / `read_sheet` are the CSV a site fills in (cxr_jax/tools/audit.py).

Label-free estimates fail under the shift that matters (docs/folder_shift.md), so a new
site labels a small stratified sample of its own folder and gets design-based estimates
of accuracy, sensitivity and specificity at the operating point, with 95% intervals that
hold whatever the model's probabilities are worth there: nothing below trusts them
beyond using them to sort the folder into strata.

- **Strata** (Cochran 1977, ch. 5): the folder is split at the threshold, so the model's
  predicted label is constant within a stratum, and each side into quantile groups of
  the probability (about LABELS_PER_STRATUM labels each, at most MAX_STRATA_PER_SIDE).
- **Allocation**: at least MIN_LABELS_PER_STRATUM per stratum (what a variance needs),
  the rest proportional to stratum size. Not Neyman: its variance guesses would come
  from the model's probabilities, which are overconfident exactly where an audit is
  needed, and Neyman allocation with wrong guesses can be worse than simple random
  sampling while proportional allocation is not (Cochran 1977, §5.5-5.6). On synthetic
  folders before the study, Neyman cut the spread of the accuracy estimate by 40%
  where the model was right and raised it by a fifth where it was confidently wrong;
  the interval below could not use the gain anyway.
- **Estimates**: the stratified estimator, sum of stratum size x stratum mean, unbiased
  for the folder's accuracy; sensitivity and specificity are combined ratio estimators
  (Cochran §6.11) of the folder's class totals, unbiased to O(1/n).
- **Intervals**: Korn & Graubard (1998): Clopper-Pearson at the effective sample size
  p(1-p)/var of the linearised variance (Woodruff 1971), with their degrees-of-freedom
  factor, and the design effect truncated at 1 (relative to sampling without
  replacement), as the NCHS standards for proportions do (Parker et al. 2017). Unlike
  a normal interval it keeps coverage when a stratum's labels all agree (a plug-in
  variance of 0). Jeffreys Beta posteriors per stratum combined by Monte Carlo were
  tried first on synthetic folders and rejected: each stratum's prior adds half a
  pseudo-error, so with 10-16 strata a folder of accuracy 0.97 got intervals that
  covered it in 0-8% of audits at 60 and 150 labels.
- **Cannot tell**: a rate whose class has no labelled image (sensitivity without a
  labelled PNEUMONIA) has no estimate; it is reported as such, never as a number.
"""

from __future__ import annotations

import csv
import os
from typing import NamedTuple

import numpy as np
from scipy import stats

LEVEL = 0.95
LABELS_PER_STRATUM = 6
MAX_STRATA_PER_SIDE = 8
MIN_LABELS_PER_STRATUM = 2
METRICS = ("accuracy", "sensitivity", "specificity")
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # Label 0, label 1 (as cxr_jax.data names them).


class Selection(NamedTuple):
  indices: np.ndarray  # Sorted indices of the images to label.
  strata: np.ndarray  # [N] stratum id of every image (ids ordered by probability).


def _strata_per_side(side_sizes: list[int], budget: int) -> list[int]:
  """How many strata each side of the threshold gets: ~LABELS_PER_STRATUM labels each."""
  total = sum(side_sizes)
  counts = [0 if size == 0 else int(np.clip(round(budget * size / total / LABELS_PER_STRATUM),
                                            1, min(MAX_STRATA_PER_SIDE, size)))
            for size in side_sizes]
  while sum(counts) * MIN_LABELS_PER_STRATUM > budget and max(counts) > 1:
    counts[int(np.argmax(counts))] -= 1  # Every stratum must be able to get its minimum.
  return counts


def make_strata(probs, threshold: float, budget: int) -> np.ndarray:
  """[N] stratum ids: quantile groups of the probability on each side of the threshold."""
  probs = np.asarray(probs, np.float64)
  sides = [np.flatnonzero(probs < threshold), np.flatnonzero(probs >= threshold)]
  strata = np.empty(len(probs), np.int64)
  next_id = 0
  for side, count in zip(sides, _strata_per_side([len(s) for s in sides], budget)):
    order = side[np.lexsort((side, probs[side]))]  # By probability, ties by index.
    for group in np.array_split(order, count) if count else []:
      strata[group] = next_id
      next_id += 1
  return strata


def allocate(sizes, budget: int) -> np.ndarray:
  """Labels per stratum: the minimum each, the rest proportional to size (largest remainder)."""
  sizes = np.asarray(sizes, np.int64)
  n = np.minimum(sizes, MIN_LABELS_PER_STRATUM)
  left = budget - int(n.sum())
  while left > 0 and (sizes > n).any():
    room = sizes - n
    share = left * np.where(room > 0, sizes, 0) / np.where(room > 0, sizes, 0).sum()
    add = np.minimum(np.floor(share).astype(np.int64), room)
    if add.sum() == 0:  # Hand out the last few by largest remainder (ties: lower id).
      add = np.zeros_like(n)
      add[np.argsort(-(share - np.floor(share)), kind="stable")[:left]] = 1
      add = np.minimum(add, room)
    n, left = n + add, left - int(add.sum())
  return n


def select(probs, budget: int, threshold: float, seed: int = 0) -> Selection:
  """Which images to label: stratified on the probability, deterministic given `seed`.

  probs and threshold on one scale (the model's own, or both calibrated).
  """
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 1 or not len(probs):
    raise ValueError("select needs a non-empty 1-D array of probabilities.")
  n_sides = int((probs < threshold).any()) + int((probs >= threshold).any())
  if not MIN_LABELS_PER_STRATUM * n_sides <= budget <= len(probs):
    raise ValueError(f"budget={budget}: must be between {MIN_LABELS_PER_STRATUM * n_sides} "
                     f"and the number of images ({len(probs)}).")
  strata = make_strata(probs, threshold, budget)
  sizes = np.bincount(strata)
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(np.flatnonzero(strata == h), k, replace=False)
            for h, k in enumerate(allocate(sizes, budget))]
  return Selection(np.sort(np.concatenate(chosen)), strata)


def design(strata, probs, threshold: float) -> tuple[np.ndarray, np.ndarray]:
  """(size, predicted label) of every stratum, what `estimate` needs besides the labels."""
  strata = np.asarray(strata)
  sizes = np.bincount(strata)
  predicted = np.zeros(len(sizes), np.int64)
  predicted[strata] = np.asarray(probs) >= threshold
  return sizes, predicted


def _collapse(sizes, n, predicted) -> list[list[int]]:
  """Groups of strata: one with fewer labels than the minimum (its rows left unlabelled)
  joins its neighbour of the same predicted label (collapsed strata, Cochran §5A.12)."""
  groups = [[h] for h in range(len(sizes)) if sizes[h] > 0]
  def short(g):
    return sum(n[h] for h in g) < min(MIN_LABELS_PER_STRATUM, sum(sizes[h] for h in g))
  while True:
    pairs = [(i, j) for i, g in enumerate(groups) if short(g) for j in (i - 1, i + 1)
             if 0 <= j < len(groups) and predicted[groups[j][0]] == predicted[g[0]]]
    if not pairs:
      return groups
    i, j = sorted(pairs[0])
    groups[i:j + 1] = [groups[i] + groups[j]]


def _interval(r: float, var: float, n_dom: int, total: float, n_groups: int, exact: bool,
              level: float) -> tuple[list[float], float]:
  """Korn-Graubard interval of a rate `r` from `n_dom` labels of a class of ~`total` images."""
  if exact:
    return [r, r], float("inf")
  srswor_n = n_dom / (1.0 - min(n_dom / total, 0.99))  # Design effect 1, without replacement.
  n_eff = min(r * (1 - r) / var, srswor_n) if var > 0 and 0 < r < 1 else srswor_n
  alpha = 1.0 - level
  df = max(n_dom - n_groups, 1)
  n_eff *= min(1.0, (stats.t.ppf(1 - alpha / 2, max(n_dom - 1, 1))
                     / stats.t.ppf(1 - alpha / 2, df)) ** 2)
  x = r * n_eff
  lo = stats.beta.ppf(alpha / 2, x, n_eff - x + 1) if x > 0 else 0.0
  hi = stats.beta.ppf(1 - alpha / 2, x + 1, n_eff - x) if x < n_eff else 1.0
  return [float(lo), float(hi)], float(n_eff)


def _check(sizes, strata, labels, predicted) -> None:
  if len(strata) != len(labels) or len(sizes) != len(predicted):
    raise ValueError("estimate: labels must match stratum_of_labelled, and strata_sizes "
                     "the predicted labels of the strata.")
  if len(labels) and (strata.min() < 0 or strata.max() >= len(sizes)):
    raise ValueError(f"estimate: stratum ids must be in 0..{len(sizes) - 1}.")
  if not np.isin(labels, (0, 1)).all() or not np.isin(predicted, (0, 1)).all():
    raise ValueError("estimate: labels and predicted labels must be 0 (NORMAL) or 1 (PNEUMONIA).")
  over = np.flatnonzero(np.bincount(strata, minlength=len(sizes)) > sizes)
  if len(over):
    raise ValueError(f"estimate: stratum {over[0]} has more labels than images.")


def _cannot_tell(reason: str, n_labels: int) -> dict:
  return {"estimate": None, "ci": None, "n_labels": int(n_labels), "cannot_tell": True,
          "reason": reason}


def _rates(N, n, k, pred) -> dict[str, tuple]:
  """{metric: (estimate, linearised variance, labels of its class, class total, strata)}."""
  p = k / n
  s2 = np.where(n > 1, p * (1 - p) * n / np.maximum(n - 1, 1), 0.0)
  g = N ** 2 * (1 - n / N) * s2 / n  # Variance of each stratum's estimated PNEUMONIA total.
  positives = N * p
  total_pos, total_neg = positives.sum(), (N - positives).sum()
  acc = (np.sum(positives * pred) + np.sum((N - positives) * (1 - pred))) / N.sum()
  out = {"accuracy": (acc, np.sum(g) / N.sum() ** 2, n.sum(), N.sum(), len(N))}
  if k.sum():
    sens = np.sum(positives * pred) / total_pos
    out["sensitivity"] = (sens, np.sum(g * (pred - sens) ** 2) / total_pos ** 2, k.sum(),
                          total_pos, int(np.sum(k > 0)))
  if (n - k).sum():
    spec = np.sum((N - positives) * (1 - pred)) / total_neg
    out["specificity"] = (spec, np.sum(g * (1 - pred - spec) ** 2) / total_neg ** 2,
                          (n - k).sum(), total_neg, int(np.sum(n - k > 0)))
  return out


def estimate(strata_sizes, stratum_of_labelled, labels, predicted_label_of_stratum,
             level: float = LEVEL) -> dict:
  """Accuracy, sensitivity and specificity of the whole folder at the operating point.

  strata_sizes: [H] images per stratum; stratum_of_labelled, labels: the labelled images'
  strata and labels (0 NORMAL, 1 PNEUMONIA); predicted_label_of_stratum: [H] 0/1.
  Each metric: {"estimate", "ci" ([lo, hi] at `level`), "n_labels" (labelled images of its
  class), "effective_n", "cannot_tell", "reason"}.
  """
  sizes = np.asarray(strata_sizes, np.int64)
  strata = np.asarray(stratum_of_labelled, np.int64).reshape(-1)
  labels = np.asarray(labels, np.int64).reshape(-1)
  predicted = np.asarray(predicted_label_of_stratum, np.int64)
  _check(sizes, strata, labels, predicted)
  n_all = np.bincount(strata, minlength=len(sizes))
  k_all = np.bincount(strata, weights=labels, minlength=len(sizes))
  groups = _collapse(sizes, n_all, predicted)
  N, n, k = (np.array([a[g].sum() for g in groups], np.float64) for a in (sizes, n_all, k_all))
  pred = np.array([predicted[g[0]] for g in groups], np.float64)
  result = {"n_images": int(sizes.sum()), "n_labelled": int(len(labels)), "level": level,
            "collapsed_strata": [g for g in groups if len(g) > 1]}
  empty = [CLASS_NAMES[s] for s in (0, 1) if (pred == s).any() and not n[pred == s].sum()]
  if empty:
    reason = f"no labelled image among those predicted {' or '.join(empty)}"
    return {**result, **{m: _cannot_tell(reason, 0) for m in METRICS}}
  rates = _rates(N, n, k, pred)
  exact = bool((n == N).all())
  for metric, (label_name, class_count) in zip(METRICS, ((None, n.sum()),
                                                         ("PNEUMONIA", k.sum()),
                                                         ("NORMAL", (n - k).sum()))):
    if metric not in rates:
      result[metric] = _cannot_tell(f"no labelled {label_name} image", class_count)
      continue
    r, var, n_dom, total, n_groups = rates[metric]
    ci, n_eff = _interval(float(r), float(var), int(n_dom), float(total), n_groups, exact, level)
    result[metric] = {"estimate": float(r), "ci": ci, "n_labels": int(n_dom),
                      "effective_n": n_eff, "cannot_tell": False, "reason": None}
  return result


def describe(name: str, metric: dict, level: float = LEVEL) -> str:
  """One line: 'accuracy 0.912 (95% interval 0.850-0.951, 58 labelled)' or why it cannot tell."""
  if metric["cannot_tell"]:
    return f"{name}: cannot tell ({metric['reason']})"
  lo, hi = metric["ci"]
  return (f"{name} {metric['estimate']:.3f} ({level:.0%} interval {lo:.3f}-{hi:.3f}, "
          f"{metric['n_labels']} labelled)")


# The sheet a site fills in, and the design file beside it.
CSV_COLUMNS = ("path", "stratum", "probability", "predicted", "label")
DESIGN_SUFFIX = ".design.json"
LABEL_VALUES = {"normal": 0, "0": 0, "pneumonia": 1, "1": 1}


def design_path(csv_path: str) -> str:
  """audit.csv -> audit.design.json: the strata, threshold and model the sheet was made for."""
  return os.path.splitext(csv_path)[0] + DESIGN_SUFFIX


def write_sheet(csv_path: str, rows: list[dict]) -> None:
  """The CSV to fill in (label column empty), written atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
  tmp = f"{csv_path}.tmp{os.getpid()}"
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, csv_path)


def parse_label(value: str) -> int | None:
  """0, 1 or None (empty) of a label cell; ValueError for anything else."""
  text = (value or "").strip().lower()
  if not text:
    return None
  if text not in LABEL_VALUES:
    raise ValueError(f"label {value!r} is not NORMAL, PNEUMONIA, 0 or 1")
  return LABEL_VALUES[text]


def read_sheet(csv_path: str, picked: dict[str, int]) -> tuple[dict[str, int], list[str]]:
  """({path: label} of the labelled rows, paths left unlabelled) of a filled sheet.

  picked: {path: stratum} of the design; a row naming another image or stratum, a
  repeated path or a bad label is an error naming the file and row.
  """
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    missing = [c for c in ("path", "stratum", "label") if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{csv_path}: no column {', '.join(missing)} (expected "
                       f"{', '.join(CSV_COLUMNS)}).")
    labels, unlabelled, seen = {}, [], set()
    for row in reader:
      where = f"{csv_path}, row {reader.line_num}"
      path = row["path"]
      if path not in picked:
        raise ValueError(f"{where}: {path!r} is not one of the images this audit picked.")
      if path in seen:
        raise ValueError(f"{where}: {path!r} appears twice.")
      seen.add(path)
      if str(row["stratum"]).strip() != str(picked[path]):
        raise ValueError(f"{where}: stratum {row['stratum']!r} of {path!r} was "
                         f"{picked[path]} when the images were picked.")
      try:
        label = parse_label(row["label"])
      except ValueError as e:
        raise ValueError(f"{where}: {e}.") from None
      if label is None:
        unlabelled.append(path)
      else:
        labels[path] = label
  unlabelled += [p for p in picked if p not in seen]  # Rows deleted from the sheet.
  return labels, unlabelled
