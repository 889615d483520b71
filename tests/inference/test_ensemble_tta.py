"""Ensembles as a model kind and test-time augmentation, on debug workdirs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from configs import cnn_baseline
from cxr_jax import registry
from cxr_jax import models
from cxr_jax import train
from cxr_jax import workdir as workdir_lib
from cxr_jax import evaluate
from cxr_jax.inference import predictors as predictor_lib
from tests.report.test_report import debug_config


@pytest.fixture(scope="module")
def members(tmp_path_factory, chest_xray_dir):
  root = tmp_path_factory.mktemp("members")
  out = []
  for seed in (0, 1):
    config = debug_config(cnn_baseline, chest_xray_dir)
    config.seed = seed
    train.train_and_evaluate(config, str(root / f"seed_{seed}"))
    out.append(str(root / f"seed_{seed}"))
  return out


def test_ensemble_averages_members_and_works_everywhere(members, tmp_path, chest_xray_dir):
  workdir = str(tmp_path / "ens")
  summary = train.create_ensemble(workdir, members)
  assert summary["model"] == "ensemble" and len(summary["members"]) == 2
  assert summary["val"]["loss"] == summary["val"]["log_loss"]
  config = workdir_lib.load_config(workdir)  # The config names its members, as ensemble.json.
  assert config.model.members == summary["members"] == workdir_lib.read_json(
      os.path.join(workdir, "ensemble.json"))["members"]
  assert models.get(config.model.name).has_model(workdir) and workdir_lib.is_trained(workdir)
  predictor = registry.load_predictor(workdir)
  images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 1), dtype=np.uint8)
  member_probs = [registry.load_predictor(m).probs(images) for m in members]
  out = predictor.predict(images)
  np.testing.assert_allclose(out.probs, np.mean(member_probs, axis=0), rtol=1e-6)
  single = registry.load_predictor(members[0]).predict(images).features
  assert out.features.shape == (5, 2 * single.shape[1])  # Members' features concatenated.
  cams = predictor.gradcam(images)
  assert cams.shape == (5, 64, 64) and 0.0 <= cams.min() and cams.max() <= 1.0
  result = evaluate.evaluate_folder(workdir, str(chest_xray_dir / "test"), max_per_class=4)
  assert result["n"] == 8 and "ood" in result and result["model"] == "ensemble"


def test_ensemble_needs_trained_members(members, tmp_path):
  with pytest.raises(ValueError, match="not a finished workdir"):
    train.create_ensemble(str(tmp_path / "e"), [members[0], str(tmp_path / "nothing")])
  assert not (tmp_path / "e").exists()
  before = sorted(os.listdir(members[0]))
  with pytest.raises(ValueError, match="is a training workdir of cnn_baseline"):
    train.create_ensemble(members[0], [members[1], members[1]])
  assert sorted(os.listdir(members[0])) == before


def test_tta_views_never_flip_and_average_the_probabilities(members):
  assert all(dx != -1 for _, dx, _ in predictor_lib.TTA_VIEWS)
  images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 1), dtype=np.uint8)
  np.testing.assert_array_equal(predictor_lib.view(images, 0.0, 0.0, 1.0), images)
  shifted = predictor_lib.view(images, 0.0, 0.25, 1.0)
  np.testing.assert_array_equal(shifted[:, :, 16:40], images[:, :, :24])  # Moved right.
  base = registry.load_predictor(members[0])
  tta = registry.load_predictor(members[0], tta=True)
  expected = np.mean([base.probs(predictor_lib.view(images, *v))
                      for v in predictor_lib.TTA_VIEWS], axis=0)
  np.testing.assert_allclose(tta.probs(images), expected, rtol=1e-6)
  np.testing.assert_array_equal(tta.predict(images).features, base.predict(images).features)


def test_adapted_numbers_are_reported_apart(members, chest_xray_dir):
  result = evaluate.evaluate_folder(members[0], str(chest_xray_dir / "test"), max_per_class=6,
                                    adapt="adabn+prior")
  adapted = result["adapted"]
  assert adapted["method"] == "adabn+prior" and 0.0 < adapted["estimated_prior"] < 1.0
  assert adapted["adabn_applied"] is False  # cnn_baseline has no BatchNorm.
  assert adapted["at_0.5"]["n"] == result["n"] == 12
  assert "Label-free adaptation" in evaluate.format_result(result)
  # The unadapted numbers are those of a plain evaluation.
  plain = evaluate.evaluate_folder(members[0], str(chest_xray_dir / "test"), max_per_class=6)
  assert plain["at_0.5"] == result["at_0.5"]


def test_a_config_with_tta_scores_with_it_unless_told_not_to(members, tmp_path, chest_xray_dir):
  """config.tta is how the recipe was selected: evaluate and predict use it by default; the
  fits stay the network's own, and --notta gives the one view."""
  workdir = tmp_path / "tta_default"
  shutil.copytree(members[0], workdir)
  config = json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())
  (workdir / workdir_lib.CONFIG_FILE).write_text(json.dumps({**config, "tta": True}))
  assert isinstance(registry.load_predictor(str(workdir)), predictor_lib.TTAPredictor)
  assert not isinstance(registry.load_predictor(str(workdir), tta=False),
                        predictor_lib.TTAPredictor)
  test_dir = str(chest_xray_dir / "test")
  default = evaluate.evaluate_folder(str(workdir), test_dir, max_per_class=4)
  views = evaluate.evaluate_folder(members[0], test_dir, max_per_class=4, tta=True)
  one = evaluate.evaluate_folder(str(workdir), test_dir, max_per_class=4, tta=False)
  assert default["tta"] and not one["tta"]
  assert default["at_0.5"] == views["at_0.5"]
  assert one["at_0.5"] == evaluate.evaluate_folder(members[0], test_dir, max_per_class=4)["at_0.5"]
