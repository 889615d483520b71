"""The Kermany et al. (2018) chest X-rays as a TensorFlow Datasets builder, `chest_xray_pneumonia`.

Nothing is downloaded: the Kaggle "Chest X-Ray Images (Pneumonia)" folder is the
manual dir. Build with either of (from the repository root):
  python -m cxr_jax.tools.build_tfds --manual_dir=data/chest_xray --data_dir=data/tensorflow_datasets
  tfds build cxr_jax/data/tfds_builder.py --manual_dir=data/chest_xray --data_dir=data/tensorflow_datasets
The `tfds` script of tfds 4.9.10 imports apache_beam at start-up (tensorflow/datasets#5463),
which the project does not install; its `build` command runs without it:
  python -c 'import sys, simple_parsing; from tensorflow_datasets.scripts.cli import build;
    simple_parsing.parse(build.Args, args=sys.argv[1:]).execute()' \\
    cxr_jax/data/tfds_builder.py --manual_dir=data/chest_xray --data_dir=data/tensorflow_datasets

Splits: `train` and `validation` are Kaggle's train/ plus its 16-image val/ (folded
in, as the folder source does: 16 images cannot select models), split by patient with
`splits.patient_grouped_split` (BuilderConfig `val_fraction`/`split_seed`, defaults
`splits.DEFAULT_*`); `test` is Kaggle's test/. Each image is decoded once with the
project's one decoder (`data.decode`, DICOM included) and stored losslessly as PNG at
its own size.

The sha256 of every source file, and every file that could not be decoded with the
reason, are kept in the dataset's metadata.json; reusing the built dataset with a
manual dir whose files differ raises SourceChangedError naming them.

`load_train_val` / `load_split` give the training pipeline the same arrays, labels,
patient split and paths as `folder.load_train_val` / `folder.load_test` on the
raw folder, building the dataset on first use.

Over 350 lines because TFDS finds a builder by its module: the builder, the source that
reads it and the checks tying it to the raw folder stay together.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.resources
import io
import os
import sys
import time
from typing import Iterable, Sequence

from absl import logging
import numpy as np
from PIL import Image

from cxr_jax.runtime import tf_import
from cxr_jax.data import dataset
from cxr_jax.data import decode
from cxr_jax.data import splits

try:
  import importlib_resources  # pylint: disable=unused-import
except ImportError:
  # TFDS 4.9.10 uses the `importlib_resources` backport when it locates a builder's
  # code but only requires it on Python < 3.9 (tensorflow/datasets#11212); the
  # standard library's module is the same API.
  sys.modules["importlib_resources"] = importlib.resources

DEFAULT_TFDS_DATA_DIR = "data/tensorflow_datasets"
tf = tf_import.tensorflow()
tfds = tf_import.tensorflow_datasets()
SPLITS = splits.SPLITS
# Files named per kind of change in error messages (all are in the exception's fields).
_MAX_NAMES_SHOWN = 20


class SourceChangedError(RuntimeError):
  """The manual dir's files differ from those the built dataset was made from."""

  def __init__(self, manual_dir: str, added: list[str], removed: list[str],
               modified: list[str], hint: str = ""):
    self.manual_dir, self.added, self.removed, self.modified = manual_dir, added, removed, modified
    parts = []
    for kind, names in (("added", added), ("removed", removed), ("modified", modified)):
      if names:
        shown = ", ".join(names[:_MAX_NAMES_SHOWN])
        more = f" and {len(names) - _MAX_NAMES_SHOWN} more" if len(names) > _MAX_NAMES_SHOWN else ""
        parts.append(f"{len(names)} {kind}: {shown}{more}")
    super().__init__(f"Source files in {manual_dir!r} differ from those the dataset was built "
                     f"from ({'; '.join(parts)}). {hint}".strip())


@dataclasses.dataclass(eq=False)
class ChestXrayPneumoniaConfig(tfds.core.BuilderConfig):
  """Which patient-grouped validation split of Kaggle's train/ the builder writes."""
  val_fraction: float = splits.DEFAULT_VAL_FRACTION
  split_seed: int = splits.DEFAULT_SPLIT_SEED


def _sha256_file(path: str) -> tuple[str, str]:
  """(sha256, "") of a file's bytes, or ("", reason) when it cannot be read."""
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest(), ""
  except OSError as e:
    return "", f"{type(e).__name__}: {e}"


def list_sources(manual_dir: str) -> list[tuple[str, splits.Example]]:
  """(Kaggle part, Example) of every source file, in listing order.

  The training pool ("pool") exactly as `splits.list_train_pool` lists it (train/,
  then val/), then test/ ("test") as the folder source lists it.
  """
  pool = splits.list_train_pool(manual_dir)
  test = splits.list_class_folder(os.path.join(manual_dir, "test"))
  return [("pool", ex) for ex in pool] + [("test", ex) for ex in test]


def source_changes(metadata: dict, manual_dir: str) -> tuple[list[str], list[str], list[str]]:
  """(added, removed, modified) file names of `manual_dir` against the built dataset's record."""
  recorded = {f["file_name"]: f["sha256"] for f in metadata["files"]}
  sources = [ex for _, ex in list_sources(os.fspath(manual_dir))]
  names = [os.path.relpath(ex.path, manual_dir) for ex in sources]
  hashes = dict(zip(names, (h for h, _ in dataset.imap(_sha256_file, [ex.path for ex in sources]))))
  added = sorted(set(names) - set(recorded))
  removed = sorted(set(recorded) - set(names))
  modified = sorted(n for n in names if n in recorded and recorded[n] != hashes[n])
  return added, removed, modified


def check_source(builder: "ChestXrayPneumonia", manual_dir: str, hint: str = "") -> None:
  """Raises SourceChangedError when `manual_dir` is not what `builder`'s data was built from."""
  added, removed, modified = source_changes(builder.info.metadata, manual_dir)
  if added or removed or modified:
    raise SourceChangedError(os.fspath(manual_dir), added, removed, modified, hint)
  logging.info("Source files in %s match the %d recorded in %s.", manual_dir,
               len(builder.info.metadata["files"]), builder.data_dir)


@dataclasses.dataclass
class _Decoded:
  sha256: str
  mode: str = ""
  png: bytes = b""
  error: str = ""
  inexact: bool = False
  size: tuple[int, int] = (0, 0)  # (width, height) of the decoded image.


def _decode_source(path: str) -> _Decoded:
  """Reads, hashes and decodes one file to the PNG that is stored (or the reason it can't be)."""
  try:  # The one reader: a FIFO or device in the manual folder is refused, never read.
    data = decode.read_bytes(path)
  except decode.ImageDecodeError as e:  # Also: removed or unreadable since it was listed.
    return _Decoded(sha256="", error=str(e))
  sha256 = hashlib.sha256(data).hexdigest()
  try:
    img = decode.open_bytes(data, path)
    native = decode.native_array(img)
  except (decode.ImageDecodeError, OSError, ValueError) as e:
    return _Decoded(sha256, error=str(e) or type(e).__name__)
  buffer = io.BytesIO()
  Image.fromarray(native[..., 0] if native.shape[-1] == 1 else native).save(buffer, format="PNG")
  return _Decoded(sha256, img.mode, buffer.getvalue(),
                  inexact=not decode.native_matches(img, native), size=img.size)


class ChestXrayPneumonia(tfds.core.GeneratorBasedBuilder,
                         # Run as a script, this copy hands over to the package module's
                         # (see the end of the file): registering both would clash.
                         skip_registration=__name__ == "__main__"):
  """Kermany et al. (2018) pediatric chest X-rays, NORMAL vs PNEUMONIA, split by patient."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: Kaggle train/ (+ val/) split by patient into train and "
               "validation, Kaggle test/ as test; images decoded with Pillow, stored as PNG "
               "at their own size; per-file sha256 and unreadable files in metadata.json.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download "Chest X-Ray Images (Pneumonia)" from
  https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia and unpack it
  so that the manual dir (--manual_dir, e.g. data/chest_xray) holds train/ and test/,
  and optionally the 16-image val/, each with NORMAL/ and PNEUMONIA/ sub-folders.
  """
  BUILDER_CONFIGS = [
      ChestXrayPneumoniaConfig(
          name="default",
          description=f"Validation = {splits.DEFAULT_VAL_FRACTION:g} of each class of Kaggle "
                      f"train/, grouped by patient, seed {splits.DEFAULT_SPLIT_SEED} (the "
                      "training pipeline's default, configs/base.py)."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Pediatric chest X-rays (Guangzhou Women and Children's Medical Center, ages "
            "1-5) labelled NORMAL or PNEUMONIA. `validation` is carved out of Kaggle's "
            "train/ by patient; Kaggle's 16-image val/ is folded into the training pool "
            "first. `image` declares 3 channels (TFDS needs a fixed count) but "
            "gray images, including RGB files whose channels are all equal, are stored "
            "as 1-channel PNG and decode to 3 equal channels, from which Pillow's "
            "RGB->L gives the gray values back exactly. metadata.json lists every "
            "source file with its sha256, split and, if it could not be decoded, why."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(splits.CLASS_NAMES)),
            "patient_id": tfds.features.Text(),
            "file_name": tfds.features.Text(),  # Relative to the manual dir.
            "sha256": tfds.features.Text(),  # Of the source file.
        }),
        supervised_keys=("image", "label"),
        homepage="https://data.mendeley.com/datasets/rscbjbr9sj/2",
        citation="""@article{kermany2018identifying,
  title={Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author={Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and others},
  journal={Cell}, volume={172}, number={5}, pages={1122--1131}, year={2018}}""",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    config = self.builder_config
    sources = list_sources(manual_dir)
    pool = [ex for part, ex in sources if part == "pool"]
    train_ex, val_ex = splits.patient_grouped_split(pool, config.val_fraction, config.split_seed)
    if not val_ex:
      raise ValueError(f"Validation split is empty (val_fraction={config.val_fraction}).")
    val_paths = {ex.path for ex in val_ex}
    # Hashed up front so the record is complete even if generation stops early; the
    # bytes decoded later are checked against it, catching files changed mid-build.
    start = time.time()
    hashes = list(dataset.imap(_sha256_file, [ex.path for _, ex in sources]))
    logging.info("Hashed %d source files in %.1fs.", len(sources), time.time() - start)
    entries = []
    for (part, ex), (sha256, error) in zip(sources, hashes):
      split = "test" if part == "test" else "validation" if ex.path in val_paths else "train"
      entries.append({"file_name": os.path.relpath(ex.path, manual_dir), "split": split,
                      "label": ex.label, "patient_id": ex.patient_id, "sha256": sha256,
                      "mode": "", "error": error})
    metadata = self.info.metadata
    metadata.clear()
    metadata.update({
        "manual_dir": os.path.abspath(manual_dir),
        "val_fraction": config.val_fraction,
        "split_seed": config.split_seed,
        "files": entries,  # Listing order; unreadable files included, with their error.
        "num_unreadable": 0,
        "unreadable": [],
    })
    by_split = {s: [(e, ex) for e, (_, ex) in zip(entries, sources) if e["split"] == s]
                for s in SPLITS}
    return {s: self._generate_examples(s, by_split[s]) for s in SPLITS}

  def _generate_examples(self, split: str, items: list[tuple[dict, splits.Example]]):
    unreadable = []
    for entry, _ in items:  # Could not even be read when hashed.
      if entry["error"]:
        unreadable.append(entry["file_name"])
        logging.warning("Unreadable source file %s (%s split): %s", entry["file_name"], split,
                        entry["error"])
    items = [(entry, ex) for entry, ex in items if not entry["error"]]
    decoded = dataset.imap(_decode_source, [ex.path for _, ex in items])
    for (entry, ex), result in zip(items, decoded):
      name = entry["file_name"]
      if result.sha256 != entry["sha256"]:
        raise SourceChangedError(self.info.metadata["manual_dir"], [], [], [name],
                                 "It changed during the build; build again.")
      if result.error:
        entry["error"] = result.error
        unreadable.append(name)
        logging.warning("Unreadable source file %s (%s split): %s", name, split, result.error)
        continue
      entry["mode"] = result.mode
      entry["size"] = list(result.size)
      if result.inexact:
        logging.warning("%s: Pillow mode %s converts to gray differently from its stored RGB; "
                        "channels=1 images from this dataset may differ by rounding.",
                        name, result.mode)
      yield name, {"image": result.png, "label": ex.label, "patient_id": ex.patient_id,
                   "file_name": name, "sha256": result.sha256}
    metadata = self.info.metadata
    metadata["unreadable"] = [{"file_name": e["file_name"], "split": e["split"],
                               "reason": e["error"]} for e in metadata["files"] if e["error"]]
    metadata["num_unreadable"] = len(metadata["unreadable"])
    if unreadable:
      logging.warning("%s: %d unreadable source file(s) left out: %s", split, len(unreadable),
                      ", ".join(unreadable))

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs) -> None:
    """As TFDS's, but a reused dataset's source is checked and a build ends with a summary."""
    download_config = download_config or tfds.download.DownloadConfig()
    if self.is_prepared() and not download_config.download_mode.overwrite_dataset:
      if download_config.manual_dir:
        check_source(self, os.fspath(download_config.manual_dir),
                     hint="Rebuild with --overwrite to replace the built dataset.")
      return super().download_and_prepare(download_dir=download_dir,
                                          download_config=download_config, **kwargs)
    start = time.time()
    super().download_and_prepare(download_dir=download_dir, download_config=download_config,
                                 **kwargs)
    self.build_seconds = time.time() - start
    logging.info("Built %s in %.1fs: %s examples, %d unreadable source files left out.",
                 self.info.full_name, self.build_seconds,
                 {s: self.info.splits[s].num_examples for s in SPLITS},
                 self.info.metadata["num_unreadable"])
    print(build_summary(self, self.build_seconds), flush=True)


def build_summary(builder: ChestXrayPneumonia, seconds: float | None = None) -> str:
  """Per-split class counts of the built dataset, its unreadable files and the build time."""
  metadata = builder.info.metadata
  lines = [f"{builder.info.full_name} in {builder.data_dir}"
           + (f", built in {seconds:.1f}s:" if seconds is not None else ":")]
  for split in SPLITS:
    counts = collections.Counter(splits.CLASS_NAMES[e["label"]] for e in metadata["files"]
                                 if e["split"] == split and not e["error"])
    per_class = ", ".join(f"{name} {counts[name]}" for name in splits.CLASS_NAMES)
    lines.append(f"  {split}: {builder.info.splits[split].num_examples} ({per_class})")
  lines.append(f"  unreadable source files left out: {metadata['num_unreadable']}"
               + "".join(f"\n    {u['file_name']}: {u['reason']}" for u in metadata["unreadable"]))
  return "\n".join(lines)


def build(manual_dir: str, data_dir: str = DEFAULT_TFDS_DATA_DIR, *, overwrite: bool = False,
          config: str | ChestXrayPneumoniaConfig | None = None) -> ChestXrayPneumonia:
  """Builds (or reuses, after checking its source) the dataset in `data_dir` from `manual_dir`."""
  builder = ChestXrayPneumonia(data_dir=data_dir, config=config)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode, try_download_gcs=False))
  return builder


def prepare(data_config) -> ChestXrayPneumonia:
  """The default-config dataset in `data_config.tfds_data_dir`, checked against its source.

  Built from `data_config.data_dir` on first use; afterwards that folder's files are
  hashed and compared with the record (SourceChangedError if they differ).
  """
  data_dir = data_config.tfds_data_dir
  builder = ChestXrayPneumonia(data_dir=data_dir)
  if not builder.is_prepared():
    logging.info("Building %s in %s from %s (first use).", builder.name, data_dir,
                 data_config.data_dir)
    return build(data_config.data_dir, data_dir)
  if not os.path.isdir(data_config.data_dir):
    # Never train on a build whose source cannot be checked: a mistyped data_dir would
    # silently train on whatever was built before.
    raise FileNotFoundError(
        f"config.data.data_dir={data_config.data_dir!r} does not exist (the TFDS build in "
        f"{builder.data_dir} is checked against it before use).")
  check_source(builder, data_config.data_dir, hint=(
      f"Rebuild: python -m cxr_jax.tools.build_tfds --manual_dir={data_config.data_dir} "
      f"--data_dir={data_dir} --overwrite"))
  return builder


def _size_error(entry: dict, min_side: int) -> str:
  """The folder source's reason for skipping an image below the minimum side, or ""."""
  width, height = entry.get("size") or (min_side, min_side)  # Unknown in older builds.
  try:
    decode.check_min_side(width, height, min_side)
  except decode.ImageDecodeError as e:
    return str(e)
  return ""


def _examples(builder: ChestXrayPneumonia, data_config, pool: bool
              ) -> tuple[list[splits.Example], dict[str, str]]:
  """The recorded training pool (or test files) as Examples, and {path: error} of bad ones."""
  examples, errors = [], {}
  min_side = int(data_config.min_image_side)
  for e in builder.info.metadata["files"]:
    if (e["split"] != "test") == pool:
      path = os.path.join(data_config.data_dir, e["file_name"])
      examples.append(splits.Example(path=path, label=e["label"], patient_id=e["patient_id"]))
      error = e["error"] or _size_error(e, min_side)
      if error:
        errors[path] = error
  return examples, errors


def _train_val(builder: ChestXrayPneumonia, data_config):
  """The pool split exactly as the folder source splits it (limit, then split)."""
  pool, errors = _examples(builder, data_config, pool=True)
  pool = splits.limit_per_class(pool, data_config.max_images_per_class)
  kind = splits.split_kind(data_config)
  train_ex, val_ex = splits.split_pool(pool, data_config.val_fraction, data_config.split_seed,
                                       kind)
  if not val_ex:
    raise ValueError(f"Validation split is empty (val_fraction={data_config.val_fraction}).")
  config = builder.builder_config
  if (data_config.max_images_per_class <= 0 and data_config.val_fraction == config.val_fraction
      and data_config.split_seed == config.split_seed and kind == "random"):
    built_val = {os.path.join(data_config.data_dir, e["file_name"])
                 for e in builder.info.metadata["files"] if e["split"] == "validation"}
    if built_val != {ex.path for ex in val_ex}:
      # The split is recomputed, so the pipeline still matches the raw folder, but
      # the dataset's own train/validation splits are stale for other readers.
      logging.warning("The train/validation splits stored in %s differ from what "
                      "splits.patient_grouped_split gives now; rebuild with --overwrite.",
                      builder.data_dir)
  skipped = [{"path": ex.path, "reason": errors[ex.path]} for ex in train_ex + val_ex
             if ex.path in errors]
  return train_ex, val_ex, skipped


def _decode(builder: ChestXrayPneumonia, tfds_splits: str, groups: Sequence[list[splits.Example]],
            data_config, description: str) -> list[dataset.DecodedSet]:
  """One DecodedSet per group of (readable) examples, in the groups' order.

  The stored PNGs are converted by `decode.Preprocess`, the raw-folder path's own
  code, in a parallel tf.data map (images below the minimum side were left out of
  the groups already, from their recorded sizes).
  """
  prep = dataclasses.replace(decode.Preprocess.from_config(data_config), min_side=1)
  data_dir = data_config.data_dir
  names = [os.path.relpath(ex.path, data_dir) for group in groups for ex in group]
  if not names:
    return [dataset.empty_set(prep) for _ in groups]
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names), dtype=tf.int64)),
      default_value=-1)

  def _convert(png: bytes) -> np.ndarray:
    return prep.apply(decode.open_image(png))

  def _map(ex):
    image = tf.numpy_function(_convert, [ex["image"]], tf.uint8, stateful=False)
    image.set_shape(prep.shape)
    return table.lookup(ex["file_name"]), image, ex["label"], ex["patient_id"]

  ds = builder.as_dataset(split=tfds_splits, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.filter(lambda ex: table.lookup(ex["file_name"]) >= 0)
  ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).batch(256)
  images = np.zeros((len(names),) + prep.shape, np.uint8)
  labels = np.full(len(names), -1, np.int32)
  patient_ids = [""] * len(names)
  start = time.time()
  for idx, batch_images, batch_labels, batch_pids in ds.as_numpy_iterator():
    images[idx], labels[idx] = batch_images, batch_labels
    for i, pid in zip(idx, batch_pids):
      patient_ids[i] = pid.decode()
  found = labels >= 0
  if not found.all():
    missing = [n for n, f in zip(names, found) if not f]
    raise ValueError(f"{len(missing)} file(s) recorded in {builder.data_dir}'s metadata are not "
                     f"in its {tfds_splits} records, e.g. {missing[:5]}: rebuild with --overwrite.")
  logging.info("Read %d %s from %s to %s in %.1fs.", len(names), description, builder.data_dir,
               "x".join(map(str, prep.shape)), time.time() - start)
  out, offset = [], 0
  for group in groups:
    sl = slice(offset, offset + len(group))
    expected = (np.array([ex.label for ex in group], np.int32), [ex.patient_id for ex in group])
    if (not np.array_equal(labels[sl], expected[0])) or patient_ids[sl] != expected[1]:
      raise ValueError(f"Labels or patient ids in {builder.data_dir} disagree with its metadata.")
    out.append(dataset.DecodedSet(images[sl], labels[sl], [ex.path for ex in group],
                                         patient_ids[sl], skipped=[]))
    offset += len(group)
  return out


def _readable(examples: Iterable[splits.Example], skipped: list[dict]) -> list[splits.Example]:
  bad = {s["path"] for s in skipped}
  return [ex for ex in examples if ex.path not in bad]


def load_train_val(data_config) -> tuple[dataset.DecodedSet, dataset.DecodedSet]:
  """`folder.load_train_val`, read from the built TFDS dataset: identical outputs.

  Uses data_config.{data_dir, tfds_data_dir, image_size, channels, val_fraction,
  split_seed, max_images_per_class}. The split is recomputed from the recorded file
  list with these settings (as the raw path does), so any val_fraction/seed works
  with the one built dataset. Files of train/ that could not be decoded are listed
  in train.skipped, as the folder source does.
  """
  builder = prepare(data_config)
  train_ex, val_ex, skipped = _train_val(builder, data_config)
  train, val = _decode(builder, "train+validation",
                       [_readable(train_ex, skipped), _readable(val_ex, skipped)], data_config,
                       description=f"train/ of {data_config.data_dir}")
  _check_not_empty(train, val, len(train_ex) + len(val_ex), data_config)
  train.skipped = skipped
  logging.info("Patient-grouped %s split (val_fraction=%.2f, seed=%d): train %s from %d "
               "patients, validation %s from %d patients.", splits.split_kind(data_config),
               data_config.val_fraction,
               data_config.split_seed, train.class_counts(), len(set(train.patient_ids)),
               val.class_counts(), len(set(val.patient_ids)))
  return train, val


def _check_not_empty(train, val, n_files: int, data_config) -> None:
  if len(train) + len(val) == 0:
    raise ValueError(f"None of the {n_files} files of train/ of {data_config.data_dir} "
                     "could be decoded.")


def load_split(data_config, split: str) -> dataset.DecodedSet:
  """One split ("train", "validation" or "test") of the built dataset, as the raw path gives it.

  "train"/"validation" equal load_train_val's (train.skipped lists train/'s unreadable
  files, validation's is empty); "test" equals
  `folder.load_test(data_config)`.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  builder = prepare(data_config)
  if split == "test":
    examples, errors = _examples(builder, data_config, pool=False)
    examples = splits.limit_per_class(examples, data_config.max_images_per_class)
    skipped = [{"path": ex.path, "reason": errors[ex.path]} for ex in examples
               if ex.path in errors]
    folder = os.path.join(data_config.data_dir, "test")
    if len(skipped) == len(examples):
      raise ValueError(f"None of the {len(examples)} files of {folder} could be decoded.")
    (data,) = _decode(builder, "test", [_readable(examples, skipped)], data_config, folder)
    data.skipped = skipped
    return data
  train_ex, val_ex, skipped = _train_val(builder, data_config)
  group = _readable(train_ex if split == "train" else val_ex, skipped)
  # Both stored splits: another val_fraction/seed, or a limit, moves files across them.
  (data,) = _decode(builder, "train+validation", [group], data_config,
                    description=f"{split} of train/ of {data_config.data_dir}")
  data.skipped = skipped if split == "train" else []
  return data
