import pytest

from cxr_jax.data import splits
from cxr_jax.data.splits import Example


@pytest.mark.parametrize("name,expected", [
    ("person1481_bacteria_3862.jpeg", "person1481"),
    ("person1481_virus_3863.jpeg", "person1481"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "IM-1427"),
    ("IM-0011-0001-0002.jpeg", "IM-0011"),
    ("scan.png", None),
])
def test_patient_id(name, expected):
  assert splits.patient_id(name) == expected


def test_split_on_real_training_folder_is_patient_disjoint_and_deterministic(chest_xray_dir):
  examples = splits.list_class_folder(str(chest_xray_dir / "train"))
  assert splits.class_counts(examples) == {"NORMAL": 1341, "PNEUMONIA": 3875}
  train, val = splits.patient_grouped_split(examples, 0.15, seed=0)
  assert not {e.patient_id for e in train} & {e.patient_id for e in val}
  assert len(train) + len(val) == len(examples)
  for label, n in ((0, 1341), (1, 3875)):
    n_val = sum(e.label == label for e in val)
    assert 0.15 * n <= n_val <= 0.15 * n + 40  # Whole patients, so a little over.
  # Same seed, any input order -> same split; another seed -> another split.
  train2, val2 = splits.patient_grouped_split(list(reversed(examples)), 0.15, seed=0)
  assert {e.path for e in val2} == {e.path for e in val}
  _, val3 = splits.patient_grouped_split(examples, 0.15, seed=1)
  assert {e.path for e in val3} != {e.path for e in val}


def test_split_keeps_every_image_of_a_patient_together():
  examples = [Example(f"p{p}_{i}.jpeg", p % 2, f"p{p}") for p in range(20) for i in range(3)]
  train, val = splits.patient_grouped_split(examples, 0.3, seed=0)
  for ex in val:
    assert sum(e.patient_id == ex.patient_id for e in val) == 3
  assert {e.patient_id for e in train}.isdisjoint({e.patient_id for e in val})
  with pytest.raises(ValueError, match="val_fraction"):
    splits.patient_grouped_split(examples, 1.0, seed=0)


def test_bad_layouts_raise_naming_the_path(tmp_path, class_folder, caplog):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    splits.list_class_folder(str(tmp_path / "nope"))
  (tmp_path / "only_normal" / "NORMAL").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="PNEUMONIA"):
    splits.list_class_folder(str(tmp_path / "only_normal"))
  (tmp_path / "only_normal" / "PNEUMONIA").mkdir()
  with pytest.raises(FileNotFoundError, match="contains no files"):
    splits.list_class_folder(str(tmp_path / "only_normal"))
  (class_folder / "COVID").mkdir()
  with caplog.at_level("WARNING"):
    examples = splits.list_class_folder(str(class_folder))
  assert "COVID" in caplog.text
  assert [e.label for e in examples] == [0] * 4 + [1] * 4


def test_blocked_split_holds_out_one_contiguous_block_of_ids_per_series():
  examples = []
  for i in range(100, 140):
    examples.append(splits.Example(f"NORMAL/IM-{i:04d}-0001.jpeg", 0, f"IM-{i:04d}"))
    examples.append(splits.Example(f"PNEUMONIA/person{i}_bacteria_{i}.jpeg", 1, f"person{i}"))
    examples.append(splits.Example(f"PNEUMONIA/person{i + 500}_virus_{i}.jpeg", 1,
                                   f"person{i + 500}"))
  train, val = splits.blocked_patient_split(examples, 0.25, seed=1)
  assert not {e.patient_id for e in train} & {e.patient_id for e in val}
  assert len(val) == len(examples) // 4
  for kind in ("IM", "bacteria", "virus"):
    ids = sorted(int("".join(c for c in e.patient_id if c.isdigit())) for e in val
                 if splits.file_series(e.path) == kind)
    assert len(ids) == 10 and ids == list(range(ids[0], ids[0] + 10)), kind  # Contiguous.
  assert splits.file_series("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM"
  other = splits.blocked_patient_split(examples, 0.25, seed=2)[1]
  assert {e.patient_id for e in other} != {e.patient_id for e in val}


def test_blocked_split_keeps_both_classes_when_file_names_carry_no_series():
  """A site's own names (one "other" series), NORMAL numbered before PNEUMONIA: blocks are
  cut within each class, so validation still holds both."""
  examples = [splits.Example(f"NORMAL/scan{i:03d}.png", 0, f"scan{i:03d}") for i in range(40)]
  examples += [splits.Example(f"PNEUMONIA/scan{i:03d}.png", 1, f"scan{i:03d}")
               for i in range(40, 120)]
  train, val = splits.blocked_patient_split(examples, 0.25, seed=0)
  assert splits.class_counts(val) == {"NORMAL": 10, "PNEUMONIA": 20}
  assert not {e.patient_id for e in train} & {e.patient_id for e in val}
