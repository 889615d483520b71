"""Data: every source of images behind one API.

  data.load(config.data, "train" | "validation" | "test") -> DecodedSet
  data.load_train_val(config.data) -> (train, validation)
  data.load_folder(folder, Preprocess(...))  any NORMAL/ + PNEUMONIA/ folder
  data.load_files(paths, Preprocess(...))    unlabelled files and folders (predict)

`config.data.source` picks where the Kermany splits come from, for every split:
"tfds" (the versioned, checksummed `chest_xray_pneumonia` build, `tfds_builder`) or
"folder" (the raw folders, `folder`). Both give identical images, labels, patient
split and paths (tested). Modules: `splits` (listing, patient split), `decode` (the
one decoding path, DICOM included), `dataset` (DecodedSet, parallel decode),
`batches`, `augment`.
"""

from __future__ import annotations

from cxr_jax.data import folder
from cxr_jax.data import splits
from cxr_jax.data.dataset import DecodedSet, UNLABELLED, empty_set  # noqa: F401
from cxr_jax.data.decode import Preprocess  # noqa: F401
from cxr_jax.data.folder import expand_paths, load_files, load_folder  # noqa: F401
from cxr_jax.data.splits import CLASS_NAMES, SPLITS  # noqa: F401

SOURCES = ("tfds", "folder")


def _source(data_config) -> str:
  source = data_config.source
  if source not in SOURCES:
    raise ValueError(f"config.data.source must be one of {SOURCES}; got {source!r}.")
  return source


def load_train_val(data_config, progress=None) -> tuple[DecodedSet, DecodedSet]:
  """(train, validation): Kaggle's train/ split by patient (see `splits`)."""
  if _source(data_config) == "tfds":
    from cxr_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
    return tfds_builder.load_train_val(data_config)
  return folder.load_train_val(data_config, progress)


def load(data_config, split: str, progress=None) -> DecodedSet:
  """One split of the Kermany data from `data_config.source`."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
  if _source(data_config) == "tfds":
    from cxr_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
    return tfds_builder.load_split(data_config, split)
  if split == "test":
    return folder.load_test(data_config, progress)
  train, val = folder.load_train_val(data_config, progress)
  return train if split == "train" else val
