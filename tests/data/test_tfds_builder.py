"""The `chest_xray_pneumonia` TFDS builder on a tiny generated Kaggle-layout folder.

Checks the build (splits, features, unreadable files, source checks) and that the
TFDS loading path gives the model exactly what the raw-folder path gives it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from configs import base as base_config
from cxr_jax.data import decode
from cxr_jax.data import folder
from cxr_jax.data import splits
from cxr_jax.data import tfds_builder
from tests.conftest import write_image

tfds.disable_progress_bar()

# Unreadable files of the generated folder (relative to it): corrupt, zero-byte, truncated.
UNREADABLE = ("test/PNEUMONIA/person303_bacteria_9.jpeg", "train/NORMAL/IM-0008-0001.jpeg",
              "train/PNEUMONIA/person7_bacteria_8.jpeg")


def _write_mode(path: pathlib.Path, seed: int, mode: str, size=(30, 41)) -> None:
  """Modes write_image lacks: P, LA, gray-content RGB and EXIF-rotated JPEG."""
  rng = np.random.default_rng(seed)
  arr = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  if mode == "gray_rgb":  # Gray X-ray saved as an RGB JPEG: three equal channels.
    Image.fromarray(np.repeat(arr[..., :1], 3, axis=-1)).save(path, format="PNG")
  elif mode == "exif":
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees when shown.
    Image.fromarray(arr).convert("L").save(path, format="JPEG", exif=exif)
  else:
    Image.fromarray(arr).convert(mode).save(path)


def make_kaggle_folder(root: pathlib.Path) -> pathlib.Path:
  """train/ (+ val/) and test/ with Kermany-style names, many image kinds and 3 bad files."""
  files = {  # name -> (mode, size)
      "train/NORMAL/IM-0001-0001.jpeg": ("L", (40, 52)),
      "train/NORMAL/IM-0001-0002.jpeg": ("RGB", (33, 47)),  # Same patient, colour.
      "train/NORMAL/IM-0002-0001.png": ("I;16", (36, 30)),
      "train/NORMAL/IM-0003-0001.png": ("RGBA", (28, 28)),
      "train/NORMAL/NORMAL2-IM-0004-0001.jpeg": ("CMYK", (30, 44)),
      "train/NORMAL/IM-0005-0001.png": ("P", (25, 31)),
      "train/NORMAL/IM-0006-0001-0001.jpeg": ("L", (48, 36)),
      "train/NORMAL/NORMAL2-IM-0007-0001.jpeg": ("exif", (26, 40)),
      "train/PNEUMONIA/person1_bacteria_1.jpeg": ("L", (40, 52)),
      "train/PNEUMONIA/person1_bacteria_2.jpeg": ("L", (44, 38)),
      "train/PNEUMONIA/person2_virus_3.jpeg": ("RGB", (30, 30)),
      "train/PNEUMONIA/person3_bacteria_4.png": ("LA", (27, 35)),
      "train/PNEUMONIA/person4_bacteria_5.jpeg": ("L", (50, 40)),
      "train/PNEUMONIA/person5_virus_6.png": ("gray_rgb", (32, 24)),
      "train/PNEUMONIA/person6_bacteria_7.jpeg": ("L", (24, 36)),
      "train/PNEUMONIA/person6_virus_10.jpeg": ("L", (24, 30)),
      "val/NORMAL/NORMAL2-IM-1427-0001.jpeg": ("L", (40, 40)),
      "val/PNEUMONIA/person1946_bacteria_4874.jpeg": ("L", (38, 41)),
      "test/NORMAL/IM-0301-0001.jpeg": ("L", (40, 52)),
      "test/NORMAL/IM-0302-0001.jpeg": ("RGB", (22, 30)),
      "test/NORMAL/IM-0303-0001.png": ("L", (36, 36)),
      "test/PNEUMONIA/person300_virus_1.jpeg": ("L", (30, 40)),
      "test/PNEUMONIA/person301_bacteria_2.jpeg": ("L", (41, 29)),
      "test/PNEUMONIA/person302_bacteria_3.jpeg": ("L", (35, 33)),
  }
  for seed, (name, (mode, size)) in enumerate(sorted(files.items())):
    if mode in ("P", "LA", "gray_rgb", "exif"):
      _write_mode(root / name, seed, mode, size)
    else:
      write_image(root / name, seed, size=size, mode=mode,
                  fmt="PNG" if name.endswith(".png") else "JPEG")
  (root / UNREADABLE[0]).write_bytes(b"")  # Zero-byte.
  (root / UNREADABLE[1]).write_bytes(b"this is not an image")
  good = (root / "train/PNEUMONIA/person1_bacteria_1.jpeg").read_bytes()
  (root / UNREADABLE[2]).write_bytes(good[:len(good) // 2])  # Truncated JPEG.
  return root


def expected_splits(manual_dir: pathlib.Path, val_fraction=None, seed=None):
  """{split: sorted readable file names} straight from splits.py."""
  pool = splits.list_train_pool(str(manual_dir))
  train, val = splits.patient_grouped_split(
      pool, splits.DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction,
      splits.DEFAULT_SPLIT_SEED if seed is None else seed)
  test = splits.list_class_folder(str(manual_dir / "test"))
  relative = lambda ex: str(pathlib.Path(ex.path).relative_to(manual_dir))
  names = lambda exs: sorted(relative(ex) for ex in exs if relative(ex) not in UNREADABLE)
  return {"train": names(train), "validation": names(val), "test": names(test)}


def data_config(manual_dir, tfds_dir, **overrides) -> ml_collections.ConfigDict:
  """configs/base.py's data fields plus tfds_data_dir."""
  config = base_config.get_config().data
  config.data_dir = str(manual_dir)
  config.tfds_data_dir = str(tfds_dir)
  config.image_size = 24  # Shrinks some test images, enlarges others.
  config.update(overrides)
  return config


class _Records(logging.Handler):

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(manual dir, tfds data dir, builder, build log warnings) of one build."""
  root = tmp_path_factory.mktemp("tfds")
  manual_dir = make_kaggle_folder(root / "chest_xray")
  handler = _Records()
  logging.getLogger().addHandler(handler)
  try:
    builder = tfds_builder.build(str(manual_dir), str(root / "tensorflow_datasets"))
  finally:
    logging.getLogger().removeHandler(handler)
  return manual_dir, root / "tensorflow_datasets", builder, handler.messages


def _records(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


def test_default_config_matches_the_training_pipeline_defaults():
  config = tfds_builder.ChestXrayPneumonia.BUILDER_CONFIGS[0]
  data = base_config.get_config().data
  assert (config.name, config.val_fraction, config.split_seed) == (
      "default", data.val_fraction, data.split_seed)
  assert tfds_builder.ChestXrayPneumonia.name == "chest_xray_pneumonia"
  assert str(tfds_builder.ChestXrayPneumonia.VERSION) == "1.0.0"


def test_splits_are_the_patient_grouped_split_with_val_folded_in(built):
  manual_dir, _, builder, _ = built
  expected = expected_splits(manual_dir)
  assert all(expected.values()) and "val/NORMAL/NORMAL2-IM-1427-0001.jpeg" in (
      expected["train"] + expected["validation"])
  found = {}
  for split in tfds_builder.SPLITS:
    assert builder.info.splits[split].num_examples == len(expected[split])
    found[split] = [r["file_name"].decode() for r in _records(builder, split)]
    assert sorted(found[split]) == expected[split]
  patients = {s: {splits.patient_id(n) for n in found[s]} for s in ("train", "validation")}
  assert not patients["train"] & patients["validation"]
  assert builder.info.features["label"].names == ["NORMAL", "PNEUMONIA"]
  assert builder.info.supervised_keys == ("image", "label")


def test_features_hold_each_decoded_image_losslessly_at_its_own_size(built):
  manual_dir, _, builder, _ = built
  for record in _records(builder, "train+validation+test"):
    path = manual_dir / record["file_name"].decode()
    data = path.read_bytes()
    assert record["sha256"].decode() == hashlib.sha256(data).hexdigest()
    assert record["label"] == splits.CLASS_NAMES.index(path.parent.name)
    assert record["patient_id"].decode() == splits.patient_id(path.name)
    native = decode.native_array(decode.open_image(data))
    assert record["image"].dtype == np.uint8
    assert np.array_equal(record["image"], np.broadcast_to(native, native.shape[:2] + (3,)))
  # Gray sources, also RGB ones whose channels are equal, are stored as 1-channel PNG.
  stored = {r["file_name"].decode(): Image.open(io.BytesIO(r["image"])).mode
            for r in tfds.as_numpy(builder.as_dataset(
                split="train+validation", decoders={"image": tfds.decode.SkipDecoding()}))}
  assert stored["train/NORMAL/IM-0001-0002.jpeg"] == "RGB"
  assert stored["train/PNEUMONIA/person5_virus_6.png"] == "L"
  assert stored["train/NORMAL/IM-0002-0001.png"] == "L"  # 16-bit.
  modes = {e["file_name"]: e["mode"] for e in builder.info.metadata["files"]}
  assert modes["train/PNEUMONIA/person5_virus_6.png"] == "RGB"  # The source's own mode.


def test_unreadable_files_are_logged_counted_and_recorded(built):
  _, _, builder, warnings = built
  metadata = builder.info.metadata
  assert metadata["num_unreadable"] == 3
  assert sorted(u["file_name"] for u in metadata["unreadable"]) == sorted(UNREADABLE)
  assert all(u["reason"] for u in metadata["unreadable"])
  assert any("empty file" in u["reason"] for u in metadata["unreadable"])
  for name in UNREADABLE:
    assert any(name in m for m in warnings), name
  recorded = {e["file_name"] for e in metadata["files"]}
  assert set(UNREADABLE) <= recorded and len(recorded) == 27  # Every source file.
  assert "unreadable source files left out: 3" in tfds_builder.build_summary(builder)
  # Recorded beside the data, for readers of the built dataset alone.
  reloaded = tfds.builder_from_directory(builder.data_dir)
  assert reloaded.info.metadata["num_unreadable"] == 3


def test_changed_source_is_detected_and_named(built, tmp_path):
  manual_dir, tfds_dir, builder, _ = built
  tfds_builder.check_source(builder, str(manual_dir))  # Unchanged: no error.
  changed = pathlib.Path(shutil.copytree(manual_dir, tmp_path / "changed"))
  (changed / "test/NORMAL/IM-0301-0001.jpeg").write_bytes(b"\xff\xd8edited")
  (changed / "train/NORMAL/IM-0005-0001.png").unlink()
  shutil.copy(changed / "train/NORMAL/IM-0001-0001.jpeg",
              changed / "train/NORMAL/IM-0099-0001.jpeg")
  with pytest.raises(tfds_builder.SourceChangedError) as error:
    tfds_builder.check_source(builder, str(changed))
  assert error.value.added == ["train/NORMAL/IM-0099-0001.jpeg"]
  assert error.value.removed == ["train/NORMAL/IM-0005-0001.png"]
  assert error.value.modified == ["test/NORMAL/IM-0301-0001.jpeg"]
  for name in ("IM-0099-0001.jpeg", "IM-0005-0001.png", "IM-0301-0001.jpeg"):
    assert name in str(error.value)
  # Rebuilding into, or loading from, the existing dataset refuses to mix the two.
  with pytest.raises(tfds_builder.SourceChangedError, match="--overwrite"):
    tfds_builder.build(str(changed), str(tfds_dir))
  with pytest.raises(tfds_builder.SourceChangedError, match="IM-0099-0001"):
    tfds_builder.load_split(data_config(changed, tfds_dir), "test")


def _assert_same(tfds_set, raw_set):
  assert tfds_set.images.shape == raw_set.images.shape
  assert np.array_equal(tfds_set.images, raw_set.images)
  assert np.array_equal(tfds_set.labels, raw_set.labels) and tfds_set.labels.dtype == np.int32
  assert tfds_set.paths == raw_set.paths
  assert tfds_set.patient_ids == raw_set.patient_ids
  assert [s["path"] for s in tfds_set.skipped] == [s["path"] for s in raw_set.skipped]
  # Same exception type; Pillow's messages hold object addresses.
  assert [s["reason"][:12] for s in tfds_set.skipped] == [s["reason"][:12] for s in raw_set.skipped]


@pytest.mark.parametrize("channels, overrides", [
    (1, {}),
    (3, {}),
    # Debug-style: a per-class limit (re-splits the subset) and another fraction and seed.
    (1, {"max_images_per_class": 8, "val_fraction": 0.3, "split_seed": 3}),
    # Blocked validation: contiguous patient-id blocks per series, recomputed the same way.
    (1, {"split": "blocked"}),
])
def test_tfds_path_gives_the_model_what_the_raw_folder_path_gives(built, channels, overrides):
  manual_dir, tfds_dir, _, _ = built
  config = data_config(manual_dir, tfds_dir, channels=channels, **overrides)
  raw_train, raw_val = folder.load_train_val(config)
  train, val = tfds_builder.load_train_val(config)
  _assert_same(train, raw_train)
  _assert_same(val, raw_val)
  assert train.skipped and not val.skipped
  _assert_same(tfds_builder.load_split(config, "train"), raw_train)
  _assert_same(tfds_builder.load_split(config, "validation"), raw_val)
  raw_test = folder.load_test(config)
  test = tfds_builder.load_split(config, "test")
  _assert_same(test, raw_test)
  # The unreadable file, and every image below config.data.min_image_side, with its size.
  reasons = {os.path.basename(s["path"]): s["reason"] for s in test.skipped}
  assert reasons.pop(os.path.basename(UNREADABLE[0])) == "empty file (0 bytes)"
  assert reasons and all("smaller than the minimum side" in r for r in reasons.values())


def test_first_use_builds_and_tfds_build_command_builds(built, tmp_path):
  manual_dir, _, _, _ = built
  # load_split builds into an empty tfds_data_dir on first use.
  config = data_config(manual_dir, tmp_path / "first_use", min_image_side=1)
  assert len(tfds_builder.load_split(config, "test")) == 6
  assert tfds_builder.ChestXrayPneumonia(data_dir=str(tmp_path / "first_use")).is_prepared()
  # The `tfds build` command's own code, given the module's path (its `tfds` script
  # also imports apache_beam in tfds 4.9.10, which the project does not install).
  simple_parsing = pytest.importorskip("simple_parsing")
  from tensorflow_datasets.scripts.cli import build as tfds_build  # pylint: disable=C0415
  args = [tfds_builder.__file__, f"--manual_dir={manual_dir}",
          f"--data_dir={tmp_path / 'cli'}"]
  simple_parsing.parse(tfds_build.Args, args=args).execute()
  cli_builder = tfds_builder.ChestXrayPneumonia(data_dir=str(tmp_path / "cli"))
  expected = expected_splits(manual_dir)
  assert {s: cli_builder.info.splits[s].num_examples for s in tfds_builder.SPLITS} == {
      s: len(names) for s, names in expected.items()}



def test_a_fifo_among_the_sources_is_an_unreadable_file_not_a_hang(tmp_path):
  fifo = tmp_path / "pipe.jpeg"
  os.mkfifo(fifo)
  decoded = tfds_builder._decode_source(str(fifo))  # pylint: disable=protected-access
  assert decoded.sha256 == "" and "not a regular file" in decoded.error
