"""Input pipeline: image folders -> decoded, resized uint8 arrays -> batches.

Each file is decoded once per run (a parallel tf.data map over the file list) and
the resized uint8 images stay in memory; epochs then only permute indices. Batches
are dicts with fixed keys and static shapes:
  train: {"image": uint8 [B,H,W,C], "label": int32 [B]}
  eval:  {"image": uint8 [B,H,W,C], "label": int32 [B], "mask": bool [B]}
Augmentation happens on the accelerator inside the jitted train step (augment.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Iterator, Sequence

import numpy as np

from cxr_jax import image_io
from cxr_jax import splits


def _tensorflow():
  """TensorFlow, imported on first decode: batching and training need only numpy and JAX."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # tf.data only runs on the host: keep TensorFlow off any GPU so JAX gets all its memory.
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow was already initialised by the caller; leave it be.
    pass
  return tf


@dataclasses.dataclass
class DecodedSet:
  """Decoded images of one split, with the files that could not be used."""
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  paths: list[str]
  patient_ids: list[str]
  skipped: list[dict]  # [{"path": ..., "reason": ...}]

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, indices: Sequence[int]) -> "DecodedSet":
    idx = np.asarray(indices, dtype=np.int64)
    return DecodedSet(self.images[idx], self.labels[idx], [self.paths[i] for i in idx],
                      [self.patient_ids[i] for i in idx], skipped=[])

  def class_counts(self) -> dict[str, int]:
    return {name: int(np.sum(self.labels == i)) for i, name in enumerate(splits.CLASS_NAMES)}


def decode_examples(examples: Sequence[splits.Example], image_size: int, channels: int,
                    description: str = "images") -> DecodedSet:
  """Decodes and resizes every file once, in parallel; bad files are skipped and listed."""
  tf = _tensorflow()
  height = width = int(image_size)
  paths = [ex.path for ex in examples]
  if not paths:
    raise ValueError(f"No files to decode for {description}.")

  def _decode(path: bytes):
    try:
      return image_io.decode_file(path.decode(), (height, width), channels), b""
    except (image_io.ImageDecodeError, OSError) as e:
      return np.zeros((height, width, channels), np.uint8), str(e).encode() or b"unreadable"

  def _map(path):
    image, error = tf.numpy_function(_decode, [path], (tf.uint8, tf.string), stateful=False)
    image.set_shape((height, width, channels))
    error.set_shape(())
    return image, error

  ds = tf.data.Dataset.from_tensor_slices(np.array(paths, dtype=object).astype(bytes))
  ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
  images = np.empty((len(paths), height, width, channels), np.uint8)
  errors: list[bytes] = []
  start = time.time()
  for batch_images, batch_errors in ds.as_numpy_iterator():
    images[len(errors):len(errors) + len(batch_errors)] = batch_images
    errors.extend(batch_errors)
    if len(paths) >= 2000 and len(errors) % 2048 == 0:
      logging.info("Decoding %s: %d/%d files", description, len(errors), len(paths))
  keep = [i for i, e in enumerate(errors) if not e]
  skipped = [{"path": paths[i], "reason": errors[i].decode(errors="replace")}
             for i, e in enumerate(errors) if e]
  for item in skipped:
    logging.warning("Skipped unreadable file %s: %s", item["path"], item["reason"])
  logging.info("Decoded %d %s to %dx%dx%d in %.1fs (%d skipped).", len(keep), description,
               height, width, channels, time.time() - start, len(skipped))
  decoded = DecodedSet(images, np.array([ex.label for ex in examples], np.int32), paths,
                       [ex.patient_id for ex in examples], skipped=[])
  if skipped:
    decoded = decoded.subset(keep)
  decoded.skipped = skipped
  if len(decoded) == 0:
    raise ValueError(f"None of the {len(paths)} files of {description} could be decoded.")
  return decoded


def _limit_per_class(examples: list[splits.Example], max_per_class: int) -> list[splits.Example]:
  """Keeps the first `max_per_class` files of each class (sorted order): debug subsets."""
  if max_per_class <= 0:
    return examples
  out, seen = [], {}
  for ex in examples:
    if seen.get(ex.label, 0) < max_per_class:
      out.append(ex)
      seen[ex.label] = seen.get(ex.label, 0) + 1
  return out


def list_train_examples(data_config) -> list[splits.Example]:
  """Kaggle `train/` (plus its tiny `val/`, folded in: 16 images can't select models)."""
  train_dir = os.path.join(data_config.data_dir, "train")
  if not os.path.isdir(train_dir):
    raise FileNotFoundError(
        f"Training folder {train_dir!r} not found: config.data.data_dir={data_config.data_dir!r} "
        "must hold train/ and test/ (each with NORMAL/ and PNEUMONIA/). See README.md.")
  examples = splits.list_class_folder(train_dir)
  kaggle_val = os.path.join(data_config.data_dir, "val")
  if os.path.isdir(kaggle_val):
    examples += splits.list_class_folder(kaggle_val)
  return _limit_per_class(examples, data_config.max_images_per_class)


def load_train_val(data_config) -> tuple[DecodedSet, DecodedSet]:
  """(train, validation) of the Kermany data, from `data_config.source`.

  "tfds": the built `chest_xray_pneumonia` TFDS dataset (built on first use from
  data_dir); "folder": the raw folders. Both give identical images and splits.
  """
  source = data_config.get("source", "folder")
  if source == "tfds":
    from cxr_jax import tfds_dataset  # pylint: disable=g-import-not-at-top
    return tfds_dataset.load_train_val(data_config)
  if source != "folder":
    raise ValueError(f"config.data.source must be 'tfds' or 'folder'; got {source!r}.")
  return load_train_val_from_folder(data_config)


def load_train_val_from_folder(data_config) -> tuple[DecodedSet, DecodedSet]:
  """Decodes train/ once and splits it by patient into (train, validation)."""
  examples = list_train_examples(data_config)
  train_ex, val_ex = splits.patient_grouped_split(
      examples, data_config.val_fraction, data_config.split_seed)
  if not val_ex:
    raise ValueError(f"Validation split is empty (val_fraction={data_config.val_fraction}).")
  decoded = decode_examples(train_ex + val_ex, data_config.image_size, data_config.channels,
                            description=f"train/ of {data_config.data_dir}")
  val_paths = {ex.path for ex in val_ex}
  is_val = np.array([p in val_paths for p in decoded.paths])
  train = decoded.subset(np.flatnonzero(~is_val))
  val = decoded.subset(np.flatnonzero(is_val))
  train.skipped = decoded.skipped
  logging.info("Patient-grouped split (val_fraction=%.2f, seed=%d): train %s from %d patients, "
               "validation %s from %d patients.", data_config.val_fraction,
               data_config.split_seed, train.class_counts(), len(set(train.patient_ids)),
               val.class_counts(), len(set(val.patient_ids)))
  return train, val


def load_folder(folder: str, image_size: int, channels: int, max_per_class: int = 0
                ) -> DecodedSet:
  """Decodes any folder laid out as NORMAL/ and PNEUMONIA/ (test split, external sets)."""
  examples = _limit_per_class(splits.list_class_folder(folder), max_per_class)
  return decode_examples(examples, image_size, channels, description=folder)


def train_batches(data: DecodedSet, batch_size: int, seed: int, epoch: int
                  ) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of shuffled full batches (seeded by (seed, epoch): reshuffled every epoch).

  The last incomplete batch is dropped so that the train step compiles once; the
  images it held are in other batches in other epochs.
  """
  if len(data) < batch_size:
    raise ValueError(f"Training set has {len(data)} images, fewer than batch_size={batch_size}.")
  order = np.random.default_rng([seed, epoch]).permutation(len(data))
  for start in range(0, len(order) - batch_size + 1, batch_size):
    idx = np.sort(order[start:start + batch_size])  # Sorted gathers are cache-friendlier.
    yield {"image": data.images[idx], "label": data.labels[idx]}


def eval_batches(data: DecodedSet, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every image exactly once; the last batch is zero-padded and masked."""
  for start in range(0, len(data), batch_size):
    images = data.images[start:start + batch_size]
    labels = data.labels[start:start + batch_size]
    n = len(labels)
    mask = np.zeros(batch_size, bool)
    mask[:n] = True
    if n < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], np.uint8)])
      labels = np.concatenate([labels, np.zeros(batch_size - n, np.int32)])
    yield {"image": images, "label": labels, "mask": mask}
