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
