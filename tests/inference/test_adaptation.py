"""Label-free site adaptation: the EM class prior and AdaBN's BatchNorm statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cxr_jax import models
from cxr_jax.inference import adaptation
from cxr_jax.inference import predictors as predictor_lib


def test_em_recovers_a_shifted_prior_from_calibrated_posteriors():
  rng = np.random.default_rng(0)
  # A calibrated model under a 0.5 prior: logit = log-likelihood ratio of two Gaussians.
  labels = rng.random(20000) < 0.3  # The new site has 30% pneumonia.
  x = rng.normal(np.where(labels, 1.0, -1.0), 1.0)
  probs = 1 / (1 + np.exp(-2 * x))  # exact posterior under equal priors
  assert adaptation.em_prior(probs, source=0.5) == pytest.approx(0.3, abs=0.01)
  np.testing.assert_allclose(adaptation.reweight(probs, 0.5, 0.5), probs)
  adapted = adaptation.reweight(probs, 0.5, 0.3)
  assert np.mean(adapted >= 0.5) < np.mean(probs >= 0.5)  # Fewer pneumonia calls.


def _cnn_v2_predictor(seed: int = 0) -> predictor_lib.FlaxPredictor:
  """A 16 px cnn_v2 (one BatchNorm) as a FlaxPredictor, without a workdir."""
  config = ml_collections.ConfigDict(dict(name="cnn_v2", block_features=(4,),
                                          convs_per_block=1, dense_features=4,
                                          dropout_rate=0.0, ops="xla"))
  model = models.create_model(config)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 1)))
  variables.pop("intermediates", None)
  predictor = predictor_lib.FlaxPredictor.__new__(predictor_lib.FlaxPredictor)
  predictor.model, predictor.variables, predictor.workdir, predictor.meta = (
      model, variables, "w", {})
  predictor.config = ml_collections.ConfigDict(
      {"model": config, "data": {"image_size": 16, "channels": 1, "min_image_side": 1,
                                 "crop_border": 0.0}})
  return predictor


def test_adabn_sets_the_first_batchnorm_to_the_folder_statistics():
  predictor = _cnn_v2_predictor()
  model, variables = predictor.model, predictor.variables
  images = np.random.default_rng(1).integers(100, 200, (8, 16, 16, 1), dtype=np.uint8)
  adapted = adaptation.adabn(predictor, images, batch_size=4)
  first = jax.lax.conv_general_dilated(
      jnp.asarray(images, jnp.float32) / 255.0, variables["params"]["ConvBlock_0"]["Conv_0"][
          "kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  halves = [first[:4], first[4:]]
  mean = np.mean([np.mean(h, axis=(0, 1, 2)) for h in halves], axis=0)
  var = np.mean([np.var(h, axis=(0, 1, 2)) for h in halves], axis=0)
  stats = adapted.variables["batch_stats"]["ConvBlock_0"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-3, atol=1e-5)
  assert predictor.variables is variables  # The original is left as it was.


def test_adabn_of_an_ensemble_adapts_each_member_that_has_batchnorm():
  images = np.random.default_rng(2).integers(100, 200, (8, 16, 16, 1), dtype=np.uint8)
  members = [_cnn_v2_predictor(0), _cnn_v2_predictor(1)]
  ensemble = predictor_lib.EnsemblePredictor("w", members[0].config, members, {})
  adapted = ensemble.with_batch_norm_of(images, adaptation.adabn)
  assert adapted is not ensemble and ensemble.members == members  # Left as it was.
  for member, alone in zip(adapted.members, members):
    expected = adaptation.adabn(alone, images)
    np.testing.assert_allclose(
        member.variables["batch_stats"]["ConvBlock_0"]["BatchNorm_0"]["mean"],
        expected.variables["batch_stats"]["ConvBlock_0"]["BatchNorm_0"]["mean"], rtol=1e-6)
  # Test-time augmentation adapts its network and keeps its views.
  tta = predictor_lib.TTAPredictor(members[0]).with_batch_norm_of(images, adaptation.adabn)
  assert isinstance(tta, predictor_lib.TTAPredictor) and tta.base is not members[0]
  np.testing.assert_allclose(
      tta.base.variables["batch_stats"]["ConvBlock_0"]["BatchNorm_0"]["mean"],
      adaptation.adabn(members[0], images).variables["batch_stats"]["ConvBlock_0"][
          "BatchNorm_0"]["mean"], rtol=1e-6)


def test_unknown_method_is_refused():
  with pytest.raises(ValueError, match="adaptation"):
    adaptation.adapt(None, np.zeros((1, 8, 8, 1), np.uint8), "tent", 1.0)


def test_balanced_indices_give_the_training_class_mix_by_predicted_label():
  probs = np.r_[np.full(90, 0.9), np.full(10, 0.1)]  # 90% predicted PNEUMONIA.
  index = adaptation.balanced_indices(probs, share=0.5, seed=0)
  assert len(index) == 100 and np.mean(probs[index] >= 0.5) == 0.5
  assert set(index[probs[index] < 0.5]) <= set(range(90, 100))  # Drawn again, within class.
  only_one = adaptation.balanced_indices(np.full(5, 0.9), share=0.5)
  assert only_one.tolist() == [0, 1, 2, 3, 4]  # Nothing to rebalance with.
