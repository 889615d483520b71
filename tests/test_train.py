"""A debug-sized run of the whole path: train -> checkpoint -> evaluate -> resume."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import cnn_baseline, pca_logreg
from cxr_jax.trainers import phases
from cxr_jax import checkpoints
from cxr_jax import train
from cxr_jax.trainers import train_step as steps
from cxr_jax import evaluate
from tests.conftest import REPO
from tests.debug_runs import MOBILENET_DEBUG


def debug_config(module, data_dir):
  config = module.get_config("debug")
  config.data.data_dir = str(data_dir)
  config.data.source = "folder"  # The TFDS path is tested (and shown identical) on its own.
  return config


@pytest.fixture(scope="module")
def one_epoch(chest_xray_dir, tmp_path_factory):
  """(workdir, summary, config) of one debug epoch of cnn_baseline, trained once for the
  module; the workdir is only read (tests copy it to train on)."""
  workdir = str(tmp_path_factory.mktemp("one_epoch") / "run")
  config = debug_config(cnn_baseline, chest_xray_dir)
  config.num_epochs = 1
  return workdir, train.train_and_evaluate(config, workdir), config


def test_train_checkpoint_evaluate_resume(chest_xray_dir, tmp_path, one_epoch):
  workdir = str(tmp_path / "run")
  trained, summary, config = one_epoch
  shutil.copytree(trained, workdir)
  config = config.copy_and_resolve_references()
  assert summary["epochs_run"] == 1 and 0.0 <= summary["val"]["f1"] <= 1.0
  assert 0.0 < summary["val_threshold"] < 1.0
  for name in ("config.json", "history.json", "train_summary.json", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name

  # The workdir alone rebuilds the model; every test image of the subset is scored.
  result = evaluate.evaluate_folder(workdir, str(chest_xray_dir / "test"), max_per_class=10)
  metrics = result["at_validation_threshold"]
  assert result["n"] == 20 and metrics["counts"] == {"NORMAL": 10, "PNEUMONIA": 10}
  assert np.sum(metrics["confusion_matrix"]) == 20
  assert metrics["threshold"] == pytest.approx(summary["val_threshold"])
  assert result["at_0.5"]["threshold"] == 0.5
  assert "validation threshold" in evaluate.format_result(result)

  # Another config is refused, naming what differs; allowed explicitly, the run continues
  # from epoch 1 instead of starting over and the change is recorded.
  config.num_epochs = 2
  with pytest.raises(train.ConfigChangedError, match=r"num_epochs: 1 -> 2"):
    train.train_and_evaluate(config, workdir)
  summary = train.train_and_evaluate(config, workdir, allow_config_change=True)
  history = json.load(open(os.path.join(workdir, "history.json")))
  assert [h["epoch"] for h in history] == [1, 2]
  assert summary["epochs_run"] == 2
  changes = json.load(open(os.path.join(workdir, train.CONFIG_HISTORY_FILE)))
  assert changes[-1]["changed"] == {"num_epochs": {"from": 1, "to": 2}}
  assert json.load(open(os.path.join(workdir, "config.json")))["num_epochs"] == 2


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch,
                                                                   one_epoch):
  workdir = str(tmp_path / "nan")
  trained, _, config = one_epoch
  shutil.copytree(trained, workdir)
  config = config.copy_and_resolve_references()
  config.num_epochs = 2
  real_loss = steps.weighted_bce
  monkeypatch.setattr(steps, "weighted_bce", lambda *a: real_loss(*a) * float("nan"))
  with pytest.raises(phases.NonFiniteLossError, match="resume point of epoch 1 is kept"):
    train.train_and_evaluate(config, workdir, allow_config_change=True)
  _, _, meta = checkpoints.RunCheckpoints(workdir).restore_latest()
  assert meta["progress"]["global_epoch"] == 1
  # Diverging before any epoch finished says so instead of claiming a checkpoint.
  with pytest.raises(phases.NonFiniteLossError, match="nothing was kept"):
    train.train_and_evaluate(config, str(tmp_path / "nan_first"))


def test_pca_logreg_trains_and_evaluates(chest_xray_dir, tmp_path):
  workdir = str(tmp_path / "pca")
  summary = train.train_and_evaluate(debug_config(pca_logreg, chest_xray_dir), workdir)
  assert summary["model"] == "pca_logreg" and 0.0 <= summary["val"]["f1"] <= 1.0
  result = evaluate.evaluate_folder(workdir, str(chest_xray_dir / "test"), max_per_class=5)
  assert result["n"] == 10 and result["at_validation_threshold"]["roc_auc"] is not None


def run_launch(*args):
  return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_misspelt_config_override_fails_clearly(tmp_path):
  proc = run_launch("--config=configs/cnn_baseline.py:debug", "--config.num_epoch=1",
                    f"--workdir={tmp_path / 'w'}")
  assert proc.returncode != 0
  assert "num_epoch" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_unknown_config_variant_fails_clearly(tmp_path):
  proc = run_launch("--config=configs/cnn_baseline.py:tiny", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode != 0 and "Unknown config variant 'tiny'" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_mobilenet_two_phases_checkpoint_and_evaluate(chest_xray_dir, debug_runs):
  workdir = debug_runs.get(MOBILENET_DEBUG).workdir  # The session's launch.py run.
  summary = json.load(open(os.path.join(workdir, "train_summary.json")))
  history = json.load(open(os.path.join(workdir, "history.json")))
  assert [h["phase"] for h in history] == ["head", "fine_tune"]
  assert summary["params"] > 300_000
  result = evaluate.evaluate_folder(workdir, str(chest_xray_dir / "test"), max_per_class=4)
  assert result["n"] == 8 and result["model"] == "mobilenet_v2"


def test_mobilenet_never_falls_back_to_random_weights(tmp_path):
  from configs import mobilenet
  from cxr_jax import models
  config = mobilenet.get_config()
  config.model.weights = str(tmp_path / "missing.h5")
  model = models.create_model(config.model)
  with pytest.raises(FileNotFoundError, match="missing.h5"):
    models.load_pretrained(model, config.model, variables={})
