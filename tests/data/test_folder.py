import numpy as np
import pytest

from cxr_jax import data as data_lib
from cxr_jax.data import batches as batches_lib
from cxr_jax.data import splits
from tests.conftest import write_image


def test_corrupt_files_are_skipped_counted_and_listed(class_folder, caplog):
  (class_folder / "NORMAL" / "IM-0999-0001.jpeg").write_bytes(b"")
  (class_folder / "PNEUMONIA" / "person999_virus_1.jpeg").write_bytes(b"\xff\xd8garbage")
  (class_folder / "PNEUMONIA" / "notes.txt").write_text("radiologist notes")
  with caplog.at_level("WARNING"):
    data = data_lib.load_folder(str(class_folder), data_lib.Preprocess(32, 1))
  assert len(data) == 8 and data.class_counts() == {"NORMAL": 4, "PNEUMONIA": 4}
  skipped = sorted(s["path"].rsplit("/", 1)[1] for s in data.skipped)
  assert skipped == ["IM-0999-0001.jpeg", "notes.txt", "person999_virus_1.jpeg"]
  assert all(s["reason"] for s in data.skipped)
  assert "IM-0999-0001.jpeg" in caplog.text


def test_a_folder_of_only_bad_files_raises(tmp_path):
  for name in ("NORMAL", "PNEUMONIA"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "x.jpeg").write_bytes(b"broken")
  with pytest.raises(ValueError, match="None of the 2 files"):
    data_lib.load_folder(str(tmp_path), data_lib.Preprocess(32, 1))


def test_missing_training_folder_names_the_setting(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.data_dir"):
    splits.list_train_pool(str(tmp_path))


def test_eval_batches_pad_and_mask_every_image_once(class_folder):
  data = data_lib.load_folder(str(class_folder), data_lib.Preprocess(16, 1))
  batches = list(batches_lib.eval_batches(data.images, batch_size=3))
  assert [b["image"].shape for b in batches] == [(3, 16, 16, 1)] * 3  # Static shapes.
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == len(data) == 8 and not mask[-1]
  images = np.concatenate([b["image"] for b in batches])[mask]
  assert np.array_equal(images, data.images)


def test_train_batches_reshuffle_every_epoch_and_are_seeded(class_folder):
  data = data_lib.load_folder(str(class_folder), data_lib.Preprocess(16, 1))
  data.labels = np.arange(len(data), dtype=np.int32)  # Tag images to follow them.
  epoch = lambda seed, e: [b["label"].tolist() for b in
                           batches_lib.train_batches(data, 4, seed, e)]
  assert epoch(0, 0) == epoch(0, 0)
  assert epoch(0, 0) != epoch(0, 1)
  assert sorted(sum(epoch(0, 0), [])) == list(range(8))
  with pytest.raises(ValueError, match="batch_size"):
    next(batches_lib.train_batches(data, 64, 0, 0))


def test_decoded_once_and_resized(class_folder):
  write_image(class_folder / "NORMAL" / "IM-0500-0001.png", seed=5, size=(300, 200), mode="RGB")
  data = data_lib.load_folder(str(class_folder), data_lib.Preprocess(24, 3))
  assert data.images.shape == (9, 24, 24, 3) and data.images.dtype == np.uint8
