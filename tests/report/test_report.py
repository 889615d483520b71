"""The comparison report on debug-sized runs: tables, figures, externals, nothing fitted on test."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import cnn_baseline, cnn_v2, cnn_v3, mobilenet, mobilenet_alpha1, pca_logreg
from cxr_jax import data as data_lib
from cxr_jax import report
from cxr_jax import train
from cxr_jax.metrics import calibration
from cxr_jax import registry
from cxr_jax.metrics import scoring
from cxr_jax.report import collect
from tests.conftest import REPO, make_class_folder

DEBUG_MODULES = {"pca_logreg": pca_logreg, "cnn_baseline": cnn_baseline}
ALL_MODULES = (pca_logreg, cnn_baseline, cnn_v2, cnn_v3, mobilenet, mobilenet_alpha1)
AT_VAL = f"at_{scoring.VALIDATION_THRESHOLD}"


def debug_config(module, data_dir):
  config = module.get_config("debug")
  config.data.data_dir = str(data_dir)
  config.data.source = "folder"
  config.num_epochs = 1
  return config


def train_debug_workdirs(root: pathlib.Path, data_dir) -> pathlib.Path:
  """root/{pca_logreg,cnn_baseline} trained on the debug subset, once per session.

  Goes through the report's own --train_missing path; a second call (another test
  module) finds them trained and reuses them.
  """
  for name, module in DEBUG_MODULES.items():
    entry = collect.Entry(name, str(root / name), config=debug_config(module, data_dir))
    status = collect.ensure_trained(entry, train_missing=True, train_fn=train.train_and_evaluate)
    assert status["status"] in ("trained", "reused"), status
  return root


def comparison_entries(workdirs) -> list[collect.Entry]:
  return collect.entries_from_configs([m.get_config() for m in ALL_MODULES], str(workdirs))


@pytest.fixture(scope="session")
def workdirs(tmp_path_factory, chest_xray_dir) -> pathlib.Path:
  return train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs", chest_xray_dir)


def external_folder(root: pathlib.Path) -> pathlib.Path:
  """4 images per class plus one unreadable file."""
  make_class_folder(root, n_per_class=4, size=(70, 90))
  (root / "PNEUMONIA" / "person999_virus_1.jpeg").write_bytes(b"not a jpeg at all")
  return root


def _png_ok(path: pathlib.Path) -> None:
  assert path.exists() and path.stat().st_size > 1000, path
  with Image.open(path) as im:
    assert im.format == "PNG"


def test_report_end_to_end(workdirs, chest_xray_dir, fullres_dir, tmp_path):
  out = tmp_path / "report"
  ext = external_folder(tmp_path / "hospital_b")
  result = report.build_report(comparison_entries(workdirs), str(out),
                               externals={"hospital_b": str(ext)},
                               sizes_dir=str(fullres_dir), max_per_class=6, n_boot=50,
                               adapt="adabn+prior")
  md = (out / "REPORT.md").read_text()

  # Every section and table.
  for heading in ("## Goal", "## Data", "## Models", "## Comparison", "## Operating points",
                  "## Calibration", "## Training curves", "## Grad-CAM", "## External folders",
                  "### hospital_b"):
    assert heading in md, heading
  assert "Kermany et al. 2018" in md and "0.928" in md and "AutoML" in md
  assert "grouped by patient, one contiguous block of patient ids per file-name series" in md
  assert re.search(r"\| 0\.928 \| 0\.968 \| \*\*test/\*\*", md)  # Selected on test.
  assert re.search(r"\*\*(met|not met)\*\*", md)
  # The label-free adaptation of test and the external folder, beside the own numbers.
  assert "## Label-free site adaptation (reported apart)" in md
  assert re.search(r"\| cnn_baseline \| hospital_b \|.*\| adabn\+prior", md)
  assert "Subset run" in md and "★" in md
  # The models without a workdir are listed as skipped, with the reason.
  for name in ("cnn_v2", "cnn_v3", "mobilenet_v2"):
    assert re.search(rf"\*\*{name}\*\* \(no workdir", md), name
  # Optional: listed (as skipped) only where its approximate weights file is present.
  if os.path.exists(mobilenet_alpha1.get_config().model.weights):
    assert re.search(r"\*\*mobilenet_v2_1\.0\*\* \(no workdir", md)
  else:
    assert "mobilenet_v2_1.0" not in md

  # Every referenced figure exists and is a PNG; the expected ones are there.
  referenced = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
  for rel in referenced:
    _png_ok(out / rel)
  names = {os.path.basename(r) for r in referenced}
  assert names >= {"class_counts.png", "image_sizes.png", "samples.png", "roc_test.png",
                   "pr_test.png", "confusion_test.png", "training_cnn_baseline.png",
                   "gradcam_cnn_baseline.png"}
  assert any(n.startswith("reliability_") for n in names)
  # The folder-level test and the label-free estimate beside the truth, with its plot.
  assert "folder-level test compares the whole folder with validation" in md
  assert "## Acquisition cues" in md and "| sharpness |" in md and "cues.png" in names
  assert "accuracy_estimates.png" in names and re.search(
      r"accuracy (\d\.\d{3}-\d\.\d{3}|not estimable without labels \(audit\)), true "
      r"\d\.\d{3}", md)

  # The unreadable external file is counted and named; the rest are scored.
  assert "**1 unreadable file(s)**" in md and "person999_virus_1.jpeg" in md
  data = json.loads((out / "report.json").read_text())
  by_name = {r["name"]: r for r in data["results"]}
  assert set(by_name) == {"pca_logreg", "cnn_baseline"}
  for r in by_name.values():
    e = r["externals"]["hospital_b"]
    assert e["n"] == 8 and e["n_skipped"] == 1 and e["counts"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert r["test"]["n"] == 12 and set(r["test"]["ci95"]) >= {"accuracy", "f1", "roc_auc"}
    lo, hi = r["test"]["ci95"]["f1"]
    assert lo <= r["test"][AT_VAL]["f1"] <= hi

  # Best = lowest validation log loss; nothing about the choice comes from test.
  best = min(data["results"], key=lambda r: r["val_loss"])
  assert data["best"] == best["name"] == result["best"]
  for name, r in by_name.items():
    predictor = registry.load_predictor(str(workdirs / name))
    assert r["thresholds"][scoring.VALIDATION_THRESHOLD] == pytest.approx(predictor.threshold)
    # Fitted on the workdir's whole validation split (the report scores a subset of it).
    val = data_lib.load(predictor.config.data, "validation")
    probs = predictor.probs(val.images)
    assert r["temperature"] == pytest.approx(
        calibration.fit_temperature(val.labels, calibration.probs_to_logits(probs)), rel=1e-3)
    assert r["thresholds"]["sensitivity"] == pytest.approx(
        calibration.threshold_for_sensitivity(val.labels, probs, 0.95))
    assert set(scoring.prediction_arrays(r["validation"]["predictions"])[0]) <= set(val.paths)
    test_paths = scoring.prediction_arrays(r["test"]["predictions"])[0]
    assert not set(val.paths) & set(test_paths)


def test_external_folder_without_classes_is_reported(workdirs, tmp_path):
  bad = tmp_path / "not_a_dataset"
  bad.mkdir()
  (bad / "x.jpeg").write_bytes(b"")
  cache = collect.DataCache(max_per_class=4)
  predictor = registry.load_predictor(str(workdirs / "pca_logreg"))
  r = collect.collect_model(predictor, "pca_logreg", externals={"bad": str(bad)}, cache=cache,
                            n_boot=20)
  assert "NORMAL" in r["externals"]["bad"]["error"]
  out = tmp_path / "out"
  report_dict = {"results": [r], "statuses": [], "externals": {"bad": str(bad)},
                 "target_sensitivity": 0.95, "best": "pca_logreg"}
  snapshot = json.dumps(report_dict, sort_keys=True, default=str)
  path = report.write_report(report_dict, str(out))
  assert json.dumps(report_dict, sort_keys=True, default=str) == snapshot  # Not mutated.
  md = open(path).read()
  assert "### bad" in md and "Not scored" in md
  assert "not available for pca_logreg" in md  # No Flax model, no Grad-CAM.


def test_empty_workdirs_still_write_a_report(tmp_path):
  out = tmp_path / "out"
  result = report.build_report(comparison_entries(tmp_path / "none"), str(out), sizes_dir=None)
  assert result["results"] == [] and result["best"] is None
  md = (out / "REPORT.md").read_text()
  assert "No trained model was available" in md
  assert all(s["status"] == "skipped" for s in result["statuses"])


def test_pick_cases_orders_correct_then_wrong_and_fills_gaps():
  labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
  probs = np.array([0.9, 0.99, 0.6, 0.1, 0.3, 0.8, 0.7, 0.2])
  cases = collect.pick_cases(labels, probs, 0.5, n_per_kind=2)
  assert cases[:4] == [(1, "TP"), (0, "TP"), (3, "TN"), (4, "TN")]
  # 2 FP and 1 FN: the wrong row is FP, FP, FN (most confident first), nothing invented.
  assert cases[4:] == [(5, "FP"), (6, "FP"), (7, "FN")]
  only_correct = collect.pick_cases([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], 0.5, 2)
  assert [k for _, k in only_correct] == ["TP", "TP", "TN", "TN"]


def test_parse_externals():
  assert collect.parse_externals(["a=/x/y", "/data/hospital_c/"]) == {
      "a": "/x/y", "hospital_c": "/data/hospital_c/"}
  with pytest.raises(ValueError, match="name=path"):
    collect.parse_externals(["=/x"])


def test_command_line(workdirs, fullres_dir, tmp_path):
  ext = external_folder(tmp_path / "ext")
  out = tmp_path / "cli"
  proc = subprocess.run(
      [sys.executable, "-m", "cxr_jax.tools.report", f"--workdirs={workdirs}",
       f"--output={out}", f"--external=site_b={ext}", "--max_per_class=4", "--n_boot=20",
       "--gradcam=none", f"--sizes_dir={fullres_dir}", "--configs=configs/pca_logreg.py"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "pca_logreg: validation predictions" in proc.stdout
  assert re.search(r"Wall time: \d+\.\d+s", proc.stdout)
  md = (out / "REPORT.md").read_text()
  assert "site_b" in md and "pca_logreg ★" in md
