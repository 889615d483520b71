"""The raw-folder source: Kaggle's `train/` and `test/`, external folders, loose files.

Files are decoded once per run (`dataset.decode_examples`) and kept in memory; the
patient-grouped split comes from `splits`, as in the TFDS build, so both sources
give identical sets.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from cxr_jax.data import dataset
from cxr_jax.data import decode
from cxr_jax.data import splits

# Folders given to `predict` are searched for these; files named directly are always
# tried. Extension-less files are included: DICOM exports often have no extension.
SEARCHED_EXTENSIONS = splits.IMAGE_EXTENSIONS + (".dcm", ".dicom")


def require_some(data: dataset.DecodedSet, n_files: int, description: str) -> None:
  if len(data) == 0:
    raise ValueError(f"None of the {n_files} files of {description} could be decoded.")


def log_split(train: dataset.DecodedSet, val: dataset.DecodedSet, data_config) -> None:
  logging.info("Patient-grouped split (val_fraction=%.2f, seed=%d): train %s from %d patients, "
               "validation %s from %d patients.", data_config.val_fraction,
               data_config.split_seed, train.class_counts(), len(set(train.patient_ids)),
               val.class_counts(), len(set(val.patient_ids)))


def load_train_val(data_config, progress=None) -> tuple[dataset.DecodedSet, dataset.DecodedSet]:
  """Decodes train/ once and splits it by patient into (train, validation).

  train.skipped lists the unreadable files of the whole pool (validation's is empty).
  """
  train_ex, val_ex = splits.train_val_examples(data_config.data_dir, data_config.val_fraction,
                                               data_config.split_seed,
                                               data_config.max_images_per_class)
  description = f"train/ of {data_config.data_dir}"
  decoded = dataset.decode_examples(train_ex + val_ex, decode.Preprocess.from_config(data_config),
                                    description, progress)
  require_some(decoded, len(train_ex) + len(val_ex), description)
  val_paths = {ex.path for ex in val_ex}
  is_val = np.array([p in val_paths for p in decoded.paths])
  train = decoded.subset(np.flatnonzero(~is_val))
  val = decoded.subset(np.flatnonzero(is_val))
  train.skipped = decoded.skipped
  log_split(train, val, data_config)
  return train, val


def load_folder(folder: str, prep: decode.Preprocess, max_per_class: int = 0,
                progress=None) -> dataset.DecodedSet:
  """Decodes any folder laid out as NORMAL/ and PNEUMONIA/ (test split, external sets)."""
  examples = splits.limit_per_class(splits.list_class_folder(folder), max_per_class)
  data = dataset.decode_examples(examples, prep, folder, progress)
  require_some(data, len(examples), folder)
  return data


def load_test(data_config, progress=None) -> dataset.DecodedSet:
  return load_folder(os.path.join(data_config.data_dir, "test"),
                     decode.Preprocess.from_config(data_config),
                     data_config.max_images_per_class, progress)


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files as given, folders searched recursively (sorted); hidden files are left out."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = []
      for root, dirs, files in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
          ext = os.path.splitext(f)[1].lower()
          if not f.startswith(".") and (ext in SEARCHED_EXTENSIONS or not ext):
            found.append(os.path.join(root, f))
      out.extend(sorted(found))
    else:
      out.append(p)  # A missing file is skipped later with its reason.
  return out


def load_files(paths: Sequence[str], prep: decode.Preprocess, progress=None
               ) -> dataset.DecodedSet:
  """Unlabelled images of files and folders (searched recursively); bad files skipped."""
  files = expand_paths(paths)
  if not files:
    raise ValueError(f"No image files found in {list(paths)}.")
  examples = [splits.Example(path=f, label=dataset.UNLABELLED, patient_id="") for f in files]
  return dataset.decode_examples(examples, prep, "files", progress)
