"""Listing of NORMAL/PNEUMONIA folders and the patient-grouped validation split.

This is the one implementation of "which file belongs to which patient and which
split" — the raw-folder source and the TFDS builder both call it, so the two can
never disagree.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Sequence

import numpy as np

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label = index; PNEUMONIA (1) is the positive class.
SPLITS = ("train", "validation", "test")
# The patient-grouped validation split of Kaggle's train/ (configs/base.py uses these).
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_SPLIT_SEED = 0
# How validation is carved out of train/: random patients, or contiguous id blocks.
SPLIT_KINDS = ("random", "blocked")
DEFAULT_SPLIT_KIND = "blocked"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# person1481_bacteria_3862.jpeg -> person1481
_PERSON_RE = re.compile(r"^(person\d+)_", re.IGNORECASE)
# IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg, IM-0011-0001-0002.jpeg -> IM-0115 / IM-1427 / IM-0011
_IM_RE = re.compile(r"^(?:NORMAL\d*-)?(IM-\d+)-", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Example:
  path: str
  label: int
  patient_id: str


def patient_id(filename: str) -> str | None:
  """Patient id encoded in a Kermany et al. file name, or None if it has none."""
  name = os.path.basename(filename)
  for pattern in (_PERSON_RE, _IM_RE):
    match = pattern.match(name)
    if match:
      return match.group(1).upper() if pattern is _IM_RE else match.group(1).lower()
  return None


def list_class_folder(folder: str, *, warn_extra: bool = True) -> list[Example]:
  """Lists `folder/NORMAL` and `folder/PNEUMONIA`, sorted, labelled 0 and 1.

  Raises FileNotFoundError naming the path when either class folder is missing or
  holds no image; unknown extra sub-folders only give a warning. Files without a
  parsable patient id get their own file stem as patient id (one group each).
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"Data folder {folder!r} does not exist.")
  entries = sorted(os.listdir(folder))
  extra = [e for e in entries
           if os.path.isdir(os.path.join(folder, e)) and e not in CLASS_NAMES]
  if extra and warn_extra:
    logging.warning("Ignoring unknown sub-folder(s) %s of %s (expected only %s).",
                    extra, folder, "/".join(CLASS_NAMES))
  missing = [c for c in CLASS_NAMES if not os.path.isdir(os.path.join(folder, c))]
  if missing:  # Layout first: a missing class says more than an empty one.
    raise FileNotFoundError(
        f"{folder!r} must contain the class folders NORMAL/ and PNEUMONIA/; "
        f"{', '.join(os.path.join(folder, c) for c in missing)} missing (found: {entries}).")
  examples = []
  for label, class_name in enumerate(CLASS_NAMES):
    class_dir = os.path.join(folder, class_name)
    # Anything that is not a folder is listed, broken links and link loops included:
    # decoding then skips it with its reason instead of it vanishing uncounted.
    files = sorted(f for f in os.listdir(class_dir)
                   if not f.startswith(".") and not os.path.isdir(os.path.join(class_dir, f)))
    if not files:
      raise FileNotFoundError(f"Class folder {class_dir!r} contains no files.")
    for f in files:
      path = os.path.join(class_dir, f)
      pid = patient_id(f) or os.path.splitext(f)[0]
      examples.append(Example(path=path, label=label, patient_id=pid))
  return examples


def patient_grouped_split(examples: Sequence[Example], val_fraction: float, seed: int
                          ) -> tuple[list[Example], list[Example]]:
  """Splits examples into (train, val) so that no patient is on both sides.

  Stratified by class: within each class, patients are shuffled with `seed` and
  moved to validation until `val_fraction` of that class's images are there. A
  patient whose images carry both labels is assigned by the majority label.
  The result depends only on (file names, labels, fraction, seed), not on order.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
  by_patient: dict[str, list[Example]] = {}
  for ex in examples:
    by_patient.setdefault(ex.patient_id, []).append(ex)
  val_patients: set[str] = set()
  rng = np.random.default_rng(seed)
  for label in range(len(CLASS_NAMES)):
    patients = sorted(p for p, exs in by_patient.items()
                      if round(np.mean([e.label for e in exs])) == label)
    n_class = sum(len(by_patient[p]) for p in patients)
    target = val_fraction * n_class
    taken = 0
    for idx in rng.permutation(len(patients)):
      if taken >= target:
        break
      val_patients.add(patients[idx])
      taken += len(by_patient[patients[idx]])
  train = [ex for ex in examples if ex.patient_id not in val_patients]
  val = [ex for ex in examples if ex.patient_id in val_patients]
  return train, val


def file_series(filename: str) -> str:
  """The acquisition series of a Kermany file name: IM, NORMAL2-IM, bacteria, virus, other."""
  name = os.path.basename(filename).lower()
  if name.startswith("normal2-im-"):
    return "NORMAL2-IM"
  if name.startswith("im-"):
    return "IM"
  for kind in ("bacteria", "virus"):
    if f"_{kind}_" in name:
      return kind
  return "other"


def _patient_number(patient: str) -> int:
  digits = re.sub(r"\D", "", patient)
  return int(digits) if digits else 0


def blocked_patient_split(examples: Sequence[Example], val_fraction: float, seed: int
                          ) -> tuple[list[Example], list[Example]]:
  """(train, val) holding out one contiguous block of patient ids per file-name series.

  Blocked cross-validation for data with acquisition-order structure (Roberts et al.
  2017). Each patient belongs to the series most of their files are in, within their
  majority class (Kermany's series are one class each; other file names are one series,
  and keying by class keeps both classes in validation); within a series
  the patients, in id order, are cut into blocks of about `val_fraction` of its images,
  and block `seed % n_blocks` is validation, so validation's patients were acquired apart
  from training's rather than interleaved with them.
  """
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1) for a blocked split, got {val_fraction}.")
  n_blocks = max(2, round(1.0 / val_fraction))
  files: dict[str, list[str]] = {}
  labels: dict[str, list[int]] = {}
  for ex in examples:
    files.setdefault(ex.patient_id, []).append(file_series(ex.path))
    labels.setdefault(ex.patient_id, []).append(ex.label)
  series: dict[tuple[int, str], list[str]] = {}
  for patient, kinds in files.items():
    key = (round(np.mean(labels[patient])), max(sorted(set(kinds)), key=kinds.count))
    series.setdefault(key, []).append(patient)
  val_patients: set[str] = set()
  for patients in series.values():
    ordered = sorted(patients, key=lambda p: (_patient_number(p), p))
    counts = np.array([len(files[p]) for p in ordered])
    # Block of each patient by where its images start in the series' cumulative count.
    starts = (np.cumsum(counts) - counts) / counts.sum()
    blocks = np.minimum((starts * n_blocks).astype(int), n_blocks - 1)
    val_patients.update(p for p, b in zip(ordered, blocks) if b == seed % n_blocks)
  train = [ex for ex in examples if ex.patient_id not in val_patients]
  val = [ex for ex in examples if ex.patient_id in val_patients]
  return train, val


def split_kind(data_config) -> str:
  """config.data.split."""
  return str(data_config.split)


def split_pool(examples: Sequence[Example], val_fraction: float, seed: int,
               kind: str = DEFAULT_SPLIT_KIND) -> tuple[list[Example], list[Example]]:
  """(train, val) of the pool by `kind`: "random" patients or "blocked" id ranges."""
  if kind not in SPLIT_KINDS:
    raise ValueError(f"config.data.split must be one of {SPLIT_KINDS}; got {kind!r}.")
  split = patient_grouped_split if kind == "random" else blocked_patient_split
  return split(examples, val_fraction, seed)


def class_counts(examples: Sequence[Example]) -> dict[str, int]:
  counts = {name: 0 for name in CLASS_NAMES}
  for ex in examples:
    counts[CLASS_NAMES[ex.label]] += 1
  return counts


def limit_per_class(examples: list[Example], max_per_class: int) -> list[Example]:
  """Keeps the first `max_per_class` files of each class (sorted order): debug subsets."""
  if max_per_class <= 0:
    return list(examples)
  out, seen = [], {}
  for ex in examples:
    if seen.get(ex.label, 0) < max_per_class:
      out.append(ex)
      seen[ex.label] = seen.get(ex.label, 0) + 1
  return out


def list_train_pool(data_dir: str, max_per_class: int = 0) -> list[Example]:
  """Kaggle `train/` (plus its tiny `val/`, folded in: 16 images can't select models)."""
  train_dir = os.path.join(data_dir, "train")
  if not os.path.isdir(train_dir):
    raise FileNotFoundError(
        f"Training folder {train_dir!r} not found: config.data.data_dir={data_dir!r} "
        "must hold train/ and test/ (each with NORMAL/ and PNEUMONIA/). See README.md.")
  examples = list_class_folder(train_dir)
  kaggle_val = os.path.join(data_dir, "val")
  if os.path.isdir(kaggle_val):
    examples += list_class_folder(kaggle_val)
  return limit_per_class(examples, max_per_class)


def train_val_examples(data_dir: str, val_fraction: float, split_seed: int,
                       max_per_class: int = 0, kind: str = DEFAULT_SPLIT_KIND
                       ) -> tuple[list[Example], list[Example]]:
  """The patient-grouped (train, validation) examples of Kaggle's train pool."""
  train, val = split_pool(list_train_pool(data_dir, max_per_class), val_fraction, split_seed,
                          kind)
  if not val:
    raise ValueError(f"Validation split is empty (config.data.val_fraction={val_fraction}).")
  return train, val
