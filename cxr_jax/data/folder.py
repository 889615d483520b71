"""The raw-folder source: Kaggle's `train/` and `test/`, external folders, loose files.

Files are decoded once per run (`dataset.decode_examples`) and kept in memory; the
patient-grouped split comes from `splits`, as in the TFDS build, so both sources
give identical sets.

Folders are read as untrusted: a member that is a symlink leading out of its folder
(to /etc/passwd, /dev/zero, another split) is skipped with its reason, and so are the
sub-folders of class folders, which are not searched; FIFOs and devices are refused
by `decode.read_bytes`. The folder itself may be a symlink (data/chest_xray ->
../shared/...): members are checked against its resolved path.
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
SUBFOLDER_REASON = "a folder, not an image (class folders are not searched recursively)"


def outside_reason(path: str, real_root: str) -> str:
  """'' when `path` resolves inside `real_root` (a realpath), else the skip reason.

  A broken link is left to fail on reading, with its own reason: nothing is read
  through it.
  """
  real = os.path.realpath(path)
  if os.path.commonpath([real, real_root]) == real_root or not os.path.exists(path):
    return ""
  return f"symlink outside the folder (to {real})"


def _split_root(path: str) -> str:
  return os.path.dirname(os.path.dirname(path))  # folder/CLASS/file -> folder


def screen_examples(examples: Sequence[splits.Example]) -> list[tuple[splits.Example, str]]:
  """Class-folder examples with the reason each is skipped ('' to read it)."""
  roots: dict[str, str] = {}
  out = []
  for ex in examples:
    root = _split_root(ex.path)
    if root not in roots:
      roots[root] = os.path.realpath(root)
    out.append((ex, outside_reason(ex.path, roots[root])))
  return out


def subfolder_skips(folder: str) -> list[dict]:
  """The folders inside folder/NORMAL and folder/PNEUMONIA, counted instead of lost."""
  out = []
  for class_name in splits.CLASS_NAMES:
    class_dir = os.path.join(folder, class_name)
    for name in sorted(os.listdir(class_dir)):
      path = os.path.join(class_dir, name)
      if not name.startswith(".") and os.path.isdir(path):
        out.append({"path": path, "reason": SUBFOLDER_REASON})
  return out


def decode_listed(listed: Sequence[tuple[splits.Example, str]], prep: decode.Preprocess,
                  description: str, progress=None) -> dataset.DecodedSet:
  """Decodes the examples without a reason; the others are skipped with theirs.

  The skips, of listing and of decoding, come in listing order.
  """
  kept = [ex for ex, reason in listed if not reason]
  for ex, reason in listed:
    if reason:
      logging.warning("Skipped %s: %s", ex.path, reason)
  data = (dataset.decode_examples(kept, prep, description, progress) if kept
          else dataset.empty_set(prep))
  decode_skips = {s["path"]: s for s in data.skipped}
  data.skipped = [{"path": ex.path, "reason": reason} if reason else decode_skips[ex.path]
                  for ex, reason in listed if reason or ex.path in decode_skips]
  return data


def require_some(data: dataset.DecodedSet, n_files: int, description: str) -> None:
  if len(data) == 0:
    raise ValueError(f"None of the {n_files} files of {description} could be decoded.")


def log_split(train: dataset.DecodedSet, val: dataset.DecodedSet, data_config) -> None:
  logging.info("Patient-grouped %s split (val_fraction=%.2f, seed=%d): train %s from %d "
               "patients, validation %s from %d patients.", splits.split_kind(data_config),
               data_config.val_fraction,
               data_config.split_seed, train.class_counts(), len(set(train.patient_ids)),
               val.class_counts(), len(set(val.patient_ids)))


def load_train_val(data_config, progress=None) -> tuple[dataset.DecodedSet, dataset.DecodedSet]:
  """Decodes train/ once and splits it by patient into (train, validation).

  train.skipped lists the unreadable files of the whole pool (validation's is empty).
  """
  train_ex, val_ex = splits.train_val_examples(data_config.data_dir, data_config.val_fraction,
                                               data_config.split_seed,
                                               data_config.max_images_per_class,
                                               splits.split_kind(data_config))
  description = f"train/ of {data_config.data_dir}"
  decoded = decode_listed(screen_examples(train_ex + val_ex),
                          decode.Preprocess.from_config(data_config), description, progress)
  require_some(decoded, len(train_ex) + len(val_ex), description)
  for name in ("train", "val"):
    split_dir = os.path.join(data_config.data_dir, name)
    if os.path.isdir(split_dir):
      decoded.skipped += _logged(subfolder_skips(split_dir))
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
  data = decode_listed(screen_examples(examples), prep, folder, progress)
  require_some(data, len(examples), folder)
  data.skipped += _logged(subfolder_skips(folder))
  return data


def _logged(skipped: list[dict]) -> list[dict]:
  for item in skipped:
    logging.warning("Skipped %s: %s", item["path"], item["reason"])
  return skipped


def load_test(data_config, progress=None) -> dataset.DecodedSet:
  return load_folder(os.path.join(data_config.data_dir, "test"),
                     decode.Preprocess.from_config(data_config),
                     data_config.max_images_per_class, progress)


def _is_searched(name: str) -> bool:
  ext = os.path.splitext(name)[1].lower()
  return not name.startswith(".") and (ext in SEARCHED_EXTENSIONS or not ext)


def _search(folder: str) -> list[tuple[str, str]]:
  """(path, skip reason or '') of the image files below `folder`, sorted."""
  real_root = os.path.realpath(folder)
  found = []

  def unlistable(e: OSError):  # os.walk would drop an unreadable sub-folder silently.
    found.append((e.filename, f"cannot list folder: {e.strerror or type(e).__name__}"))

  for root, dirs, files in os.walk(folder, onerror=unlistable):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for d in list(dirs):
      path = os.path.join(root, d)
      if os.path.islink(path):
        # Not followed (os.walk's default): inside the folder it is searched anyway,
        # outside it is skipped like any link out.
        dirs.remove(d)
        reason = outside_reason(path, real_root)
        if reason:
          found.append((path, reason))
    found.extend((os.path.join(root, f), outside_reason(os.path.join(root, f), real_root))
                 for f in files if _is_searched(f))
  return sorted(found)


def list_files(paths: Sequence[str]) -> list[tuple[str, str]]:
  """(path, skip reason or '') of files as given and of folders searched recursively.

  Hidden files and names without an image extension are not searched; a file named
  directly is always tried (a missing one is skipped later with its reason).
  """
  out = []
  for p in paths:
    out.extend(_search(p) if os.path.isdir(p) else [(p, "")])
  return out


def expand_paths(paths: Sequence[str]) -> list[str]:
  """The files `list_files` would read; those it skips are logged (load_files lists them)."""
  listed = list_files(paths)
  _logged([{"path": p, "reason": r} for p, r in listed if r])
  return [p for p, r in listed if not r]


def load_files(paths: Sequence[str], prep: decode.Preprocess, progress=None
               ) -> dataset.DecodedSet:
  """Unlabelled images of files and folders (searched recursively); bad files skipped."""
  listed = list_files(paths)
  if not listed:
    raise ValueError(f"No image files found in {list(paths)}.")
  return decode_listed([(splits.Example(path=p, label=dataset.UNLABELLED, patient_id=""), r)
                        for p, r in listed], prep, "files", progress)
