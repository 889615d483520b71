"""Scoring files with a trained workdir: JPEG, PNG, DICOM, unreadable files, cached calibration."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxr_jax import data as data_lib
from cxr_jax import workdir as workdir_lib
from cxr_jax.fits import fit
from cxr_jax import predict
from tests.conftest import REPO, write_image
from tests.data.test_dicom import _dataset as dicom_dataset
from tests.report.test_report import train_debug_workdirs


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory, chest_xray_dir) -> pathlib.Path:
  # Same folder as test_report's fixture: whichever runs first trains, the other reuses.
  return train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs", chest_xray_dir)


def write_dicom(path: pathlib.Path, arr: np.ndarray) -> None:
  """An uncompressed 8-bit MONOCHROME2 DICOM file of `arr`."""
  ds = dicom_dataset()
  ds.set_pixel_data(arr, "MONOCHROME2", 8, generate_instance_uid=False)
  buf = io.BytesIO()
  ds.save_as(buf, enforce_file_format=True)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buf.getvalue())


def make_inputs(root: pathlib.Path) -> pathlib.Path:
  """JPEG, RGB PNG, a DICOM and a PNG of the same pixels, an unreadable file, a non-image."""
  write_image(root / "a.jpeg", seed=1, size=(80, 100))
  write_image(root / "sub" / "b.png", seed=2, size=(60, 60), mode="RGB")
  # Full 0..255 range: DICOM min-max scaling leaves the pixels as they are.
  pixels = np.random.default_rng(3).integers(0, 256, (70, 90), dtype=np.uint8)
  pixels[0, 0], pixels[0, 1] = 0, 255
  Image.fromarray(pixels, mode="L").save(root / "sub" / "same.png")
  write_dicom(root / "sub" / "deeper" / "scan.dcm", pixels)
  (root / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  (root / "notes.txt").write_text("not an image, not searched")
  return root


def read_csv(path) -> dict[str, dict]:
  with open(path, newline="") as f:
    return {os.path.basename(row["path"]): row for row in csv.DictReader(f)}


def test_predict_files_dicom_errors_gradcam_and_cached_calibration(workdirs, tmp_path,
                                                                   monkeypatch):
  workdir = str(workdirs / "cnn_baseline")
  inputs = make_inputs(tmp_path / "in")
  cal_path = os.path.join(workdir, workdir_lib.CALIBRATION_FILE)
  if os.path.exists(cal_path):
    os.remove(cal_path)  # Another test may have cached it; this one checks the first fit.
  out = tmp_path / "preds.csv"
  missing = str(tmp_path / "nowhere.png")
  summary = predict.predict_files(workdir, [str(inputs), missing], str(out),
                                  gradcam_dir=str(tmp_path / "cams"))
  rows = read_csv(out)
  assert set(rows) == {"a.jpeg", "b.png", "same.png", "scan.dcm", "broken.jpeg", "nowhere.png"}
  assert summary["n_scored"] == 4 and summary["n_errors"] == 2
  assert not summary["calibration_reused"] and os.path.exists(cal_path)
  for name in ("a.jpeg", "b.png", "same.png", "scan.dcm"):
    row = rows[name]
    assert row["error"] == "" and 0.0 <= float(row["probability"]) <= 1.0
    assert row["operating_point"] == "0.5"  # The config's default rule.
    if row["in_distribution"] == "1":
      assert row["label"] in ("0", "1")
      assert (float(row["raw_probability"]) >= float(row["raw_threshold"])) == (
          row["label"] == "1")
      assert row["label_name"] == ("PNEUMONIA" if row["label"] == "1" else "NORMAL")
    else:  # Unlike the training images: no diagnosis, the probability kept.
      assert row["label"] == "" and row["label_name"] == predict.OUT_OF_DISTRIBUTION
    with Image.open(row["gradcam"]) as im:
      assert im.format == "PNG"
  # The DICOM file is seen exactly like the PNG of the same pixels.
  assert rows["scan.dcm"]["raw_probability"] == rows["same.png"]["raw_probability"]
  for name in ("broken.jpeg", "nowhere.png"):
    assert rows[name]["error"] and rows[name]["probability"] == "" and rows[name]["label"] == ""
  cal = json.load(open(cal_path))
  assert cal["temperature"] > 0 and "0.95" in cal["sensitivity_thresholds"]
  assert float(rows["a.jpeg"]["raw_threshold"]) == pytest.approx(cal["operating_points"]["0.5"])
  # The folder as a whole: the shift test and the label-free accuracy estimate.
  assert summary["folder_test"]["n"] == 4 and 0 <= summary["folder_test"]["p_value"] <= 1
  assert "Folder of 4 images" in predict.format_summary(summary)

  # Second call: the cached calibration is used, not refitted.
  def no_refit(*args, **kwargs):
    raise AssertionError("calibration refitted although calibration.json was cached")
  monkeypatch.setattr(fit, "fit_calibration", no_refit)
  out2 = tmp_path / "preds_sens.csv"
  summary = predict.predict_files(workdir, [str(inputs / "a.jpeg")], str(out2),
                                  target_sensitivity=0.95)
  assert summary["calibration_reused"]
  row = read_csv(out2)["a.jpeg"]
  assert row["operating_point"] == "sensitivity_0.95"
  assert float(row["raw_threshold"]) == pytest.approx(cal["sensitivity_thresholds"]["0.95"])
  assert row["raw_probability"] == rows["a.jpeg"]["raw_probability"]


def test_stale_calibration_is_refitted(workdirs, tmp_path):
  workdir = str(workdirs / "pca_logreg")
  image = tmp_path / "x.png"
  write_image(image, seed=5, size=(64, 64))
  predict.predict_files(workdir, [str(image)], str(tmp_path / "p1.csv"))
  cal_path = os.path.join(workdir, workdir_lib.CALIBRATION_FILE)
  cal = json.load(open(cal_path))
  cal["source"]["threshold"] = -1.0  # As if the model had been retrained since.
  json.dump(cal, open(cal_path, "w"))
  summary = predict.predict_files(workdir, [str(image)], str(tmp_path / "p2.csv"),
                                  target_sensitivity=0.9)
  assert not summary["calibration_reused"]
  cal = json.load(open(cal_path))
  assert set(cal["sensitivity_thresholds"]) == {"0.9", "0.95"}


def test_command_line_pca_without_gradcam(workdirs, tmp_path):
  inputs = make_inputs(tmp_path / "in")
  out = tmp_path / "preds.csv"
  proc = subprocess.run(
      [sys.executable, "-m", "cxr_jax.tools.predict", f"--workdir={workdirs / 'pca_logreg'}",
       str(inputs / "a.jpeg"), str(inputs / "sub"), str(inputs / "broken.jpeg"),
       f"--output={out}", f"--gradcam_dir={tmp_path / 'cams'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "5 files, 4 scored, 1 unreadable" in proc.stdout
  assert "Grad-CAM is not available for pca_logreg" in proc.stdout
  rows = read_csv(out)
  assert rows["broken.jpeg"]["error"] and rows["scan.dcm"]["error"] == ""
  assert not (tmp_path / "cams").exists()


def test_expand_paths_recurses_and_keeps_explicit_files(tmp_path):
  inputs = make_inputs(tmp_path / "in")
  found = [os.path.relpath(p, inputs) for p in data_lib.expand_paths([str(inputs)])]
  assert found == ["a.jpeg", "broken.jpeg", "sub/b.png", "sub/deeper/scan.dcm", "sub/same.png"]
  assert data_lib.expand_paths([str(inputs / "notes.txt")]) == [str(inputs / "notes.txt")]


def test_adapted_answers_come_beside_the_models_own(workdirs, tmp_path, chest_xray_dir):
  """--adapt never replaces an answer: the own columns are those of --adapt=none, and the
  adapted_* columns say what adaptation made of the same files."""
  workdir = str(workdirs / "cnn_baseline")  # Its BatchNorm-free net: the prior adapts.
  files = sorted((chest_xray_dir / "test" / "NORMAL").iterdir())[:6]
  own = predict.predict_files(workdir, files, str(tmp_path / "own.csv"), adapt="none")
  adapted = predict.predict_files(workdir, files, str(tmp_path / "adapted.csv"),
                                  adapt="adabn+prior")
  rows_own, rows_adapted = read_csv(tmp_path / "own.csv"), read_csv(tmp_path / "adapted.csv")
  for name, row in rows_own.items():
    for column in ("probability", "label_name", "threshold", "operating_point"):
      assert rows_adapted[name][column] == row[column], column
    assert row["adapted_probability"] == "" and row["adaptation"] == ""  # None asked for.
    assert rows_adapted[name]["adaptation"] == "adabn+prior"
    assert 0 <= float(rows_adapted[name]["adapted_probability"]) <= 1
  assert adapted["adaptation"]["method"] == "adabn+prior" and own["adaptation"] == {}


def test_auto_adapts_only_a_shifted_folder_of_enough_images(monkeypatch):
  from cxr_jax.inference import adaptation  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(adaptation, "AUTO_METHOD", "balanced+prior")
  monkeypatch.setattr(adaptation, "AUTO_MIN_IMAGES", 50)
  assert adaptation.resolve("adabn", 3, False) == ("adabn", "--adapt=adabn")
  assert adaptation.resolve("auto", 500, False)[0] == "none"
  assert adaptation.resolve("auto", 500, None)[0] == "none"  # No verdict: no adaptation.
  method, reason = adaptation.resolve("auto", 20, True)
  assert method == "none" and "fewer than the 50" in reason
  assert adaptation.resolve("auto", 50, True)[0] == "balanced+prior"
  monkeypatch.setattr(adaptation, "AUTO_METHOD", None)
  assert adaptation.resolve("auto", 500, True)[0] == "none"
