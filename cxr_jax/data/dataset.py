"""A decoded split in memory, and the parallel decode that makes one from files.

Every source (raw folders, the TFDS build, files given to `predict`) ends in a
`DecodedSet`: resized uint8 images that stay in memory, their labels and paths, and
the files that could not be used, each with its reason. Epochs then only permute
indices (`data.batches`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from cxr_jax.data import decode
from cxr_jax.data import splits

UNLABELLED = -1


def _bar(iterable, total: int, desc: str):
  from cxr_jax.runtime import progress  # pylint: disable=g-import-not-at-top  # tqdm only when decoding.
  return progress.bar(iterable, total, desc[:40], unit="img")  # The label of images read without one (predict, label-free adaptation).


@dataclasses.dataclass
class DecodedSet:
  """Decoded images of one split, with the files that could not be used."""
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]; UNLABELLED where unknown
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

  @property
  def is_labelled(self) -> bool:
    return bool(len(self.labels)) and bool(np.all(self.labels != UNLABELLED))


def empty_set(prep: decode.Preprocess, skipped: list[dict] | None = None) -> DecodedSet:
  return DecodedSet(np.zeros((0,) + prep.shape, np.uint8), np.zeros(0, np.int32), [], [],
                    skipped or [])


def imap(fn: Callable, items: Sequence, workers: int | None = None) -> Iterator:
  """fn over items in threads, in order, with a bounded number in flight.

  Pillow's decoders and resizers and hashlib release the GIL, so threads scale here;
  the bound keeps full-resolution results from piling up in memory.
  """
  workers = workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 4 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def decode_examples(examples: Sequence[splits.Example], prep: decode.Preprocess,
                    description: str = "images",
                    progress: Callable[[Iterator, int, str], Iterator] | None = None
                    ) -> DecodedSet:
  """Decodes and resizes every file once, in parallel; bad files are skipped and listed.

  progress: optional wrapper of the result iterator (a progress bar), given the count.
  """
  if not examples:
    raise ValueError(f"No files to decode for {description}.")

  def _decode(path: str):
    try:
      return decode.decode_file(path, prep), ""
    except decode.ImageDecodeError as e:
      return None, str(e) or "unreadable"

  images = np.empty((len(examples),) + prep.shape, np.uint8)
  errors: list[str] = []
  start = time.time()
  results = imap(_decode, [ex.path for ex in examples])
  results = (progress or _bar)(results, len(examples), f"decoding {description}")
  for i, (image, error) in enumerate(results):
    if image is not None:
      images[i] = image
    errors.append(error)
  keep = [i for i, e in enumerate(errors) if not e]
  skipped = [{"path": examples[i].path, "reason": errors[i]} for i, e in enumerate(errors) if e]
  for item in skipped:
    logging.warning("Skipped %s: %s", item["path"], item["reason"])
  logging.info("Decoded %d %s to %s in %.1fs (%d skipped).", len(keep), description,
               "x".join(map(str, prep.shape)), time.time() - start, len(skipped))
  decoded = DecodedSet(images, np.array([ex.label for ex in examples], np.int32),
                       [ex.path for ex in examples], [ex.patient_id for ex in examples],
                       skipped=[])
  if skipped:
    decoded = decoded.subset(keep)
  decoded.skipped = skipped
  return decoded
