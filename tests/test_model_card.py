"""MODEL_CARD.md and its JSON twin, written after training and refreshed by evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cxr_jax import model_card
from tests.conftest import REPO
from tests.report.test_report import train_debug_workdirs


def test_card_after_training_has_every_field(tmp_path_factory, chest_xray_dir):
  workdirs = train_debug_workdirs(tmp_path_factory.getbasetemp() / "debug_workdirs",
                                  chest_xray_dir)
  workdir = str(workdirs / "cnn_baseline")
  text = open(os.path.join(workdir, model_card.CARD_FILE)).read()
  for heading in ("## Model details", "## Intended use", "## Factors", "## Metrics",
                  "## Training data", "## Evaluation data", "## Ethical considerations",
                  "## Caveats and recommendations"):
    assert heading in text, heading
  assert "not a diagnosis" in text.lower() and "adults" in text
  card = json.load(open(os.path.join(workdir, model_card.CARD_JSON)))
  assert card["metrics"]["out_of_distribution"]["kind"] == "mahalanobis"

  # evaluate writes its result into the workdir and refreshes the card with it.
  proc = subprocess.run([sys.executable, "-m", "cxr_jax.tools.evaluate", f"--workdir={workdir}",
                         f"--data_dir={chest_xray_dir / 'test'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  card = json.load(open(os.path.join(workdir, model_card.CARD_JSON)))
  assert card["evaluation_data"]["test"]["n"] == 624
  text = open(os.path.join(workdir, model_card.CARD_FILE)).read()
  assert "| test (" in text and "folder vs validation" in text
  folder = card["evaluation_data"]["test"]["folder_test"]
  assert 0 <= folder["p_value"] <= 1
  assert folder["accuracy_estimable"] == (folder["accuracy_interval"] is not None)
  assert "without labels" in text and "Folder of 624 images" in proc.stdout
  assert "Estimated accuracy without labels" not in proc.stdout


def test_the_card_shows_numbers_to_three_significant_digits_and_the_json_keeps_them():
  assert model_card.shown(0.20426316559314728) == "0.204"
  assert model_card.shown(1234.5678) == "1.23e+03" and model_card.shown(None) == "–"
  assert model_card.shown({"val_f1": 0.20426316559314728, "0.5": 0.5}) == "val_f1 0.204, 0.5 0.5"
  card = {"model_details": {"name": "m", "description": "d", "architecture": "a",
                            "parameters": 10, "trained": "t", "code_version": "v",
                            "command": "c", "citation": "x",
                            "training": {"best_epoch": 1, "epochs_run": 2,
                                         "selection_metric": "loss"}},
          "intended_use": {"primary": "p", "users": "u", "out_of_scope": "o"},
          "factors": [], "ethical_considerations": "e", "caveats": [],
          "metrics": {"operating_point": {"rule": "0.5", "why": "w",
                                          "thresholds": {"val_f1": 0.20426316559314728}},
                      "calibration": {"temperature": 1.2345678, "val_ece": 0.0123456,
                                      "val_ece_calibrated": 0.00987654},
                      "out_of_distribution": {"kind": "mahalanobis", "threshold": 123.456789,
                                              "accept": 0.99},
                      "uncertainty": "b"},
          "training_data": {"source": "s", "split": "sp", "skipped_files": 0,
                            "preprocessing": {"image_size": 160}},
          "evaluation_data": {"validation": {"f1": 0.99234567, "roc_auc": 0.9990123,
                                             "loss": 0.033812345}}}
  text = model_card.render(card)
  assert "val_f1 0.204" in text and "0.20426" not in text
  assert "temperature 1.23" in text and "ECE 0.0123 before, 0.00988 after" in text
  assert "threshold 123 (0.99" in text and "F1 0.992, ROC AUC 0.999, log loss 0.0338" in text
