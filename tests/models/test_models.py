import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import cnn_baseline, cnn_v2, cnn_v3
from cxr_jax.trainers import phases
from cxr_jax import models
from cxr_jax.trainers import train_step as steps


@pytest.mark.parametrize("config_module", [cnn_baseline, cnn_v2, cnn_v3])
def test_output_is_one_logit_per_image(config_module):
  config = config_module.get_config()
  model = models.create_model(config.model)
  x = jnp.zeros((2, 64, 64, config.data.channels))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(variables, x).shape == (2,)
  assert models.param_count(variables["params"]) > 10_000


def test_unknown_model_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="cnn_v3"):
    models.create_model(ml_collections.ConfigDict({"name": "resnet9000"}))


def test_train_step_lowers_the_loss_on_a_tiny_batch():
  config = cnn_v2.get_config("debug")
  config.augment.enabled = False
  model = models.create_model(config.model)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8),
           "label": np.array([0, 1] * 4, np.int32)}
  batch["image"][batch["label"] == 1] //= 2  # A learnable difference.
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))
  phase = phases.get_phases(config)[0]
  hparams = steps.phase_hparams(config, phase, 20, np.ones(2, np.float32))
  state = steps.create_state(model, variables, hparams)
  step = jax.jit(steps.make_train_step(model), donate_argnums=(0,))
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 20


def test_class_weights_balance_the_classes():
  w = steps.class_weights(np.array([0] * 10 + [1] * 30), "balanced")
  np.testing.assert_allclose(w, [2.0, 2 / 3])
  with pytest.raises(ValueError, match="class_weight"):
    steps.class_weights(np.array([0, 1]), "inverse")


def test_mobilenet_head_phase_trains_only_the_head():
  from configs import mobilenet
  config = mobilenet.get_config("last6")  # Its fine-tuning phase trains the last 6 blocks.
  model = models.create_model(config.model)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))["params"]
  head, fine_tune = [phases.get_phases(config)[i] for i in (0, 1)]
  trained = lambda phase: {"/".join(getattr(k, "key", str(k)) for k in path)
                           for path, m in jax.tree_util.tree_leaves_with_path(
                               steps.trainable_mask(params, phase, model)) if m}
  assert trained(head) == {"head/kernel", "head/bias"}
  tuned = trained(fine_tune)
  assert "backbone/Conv_1/kernel" in tuned and "backbone/block_16_project/kernel" in tuned
  assert "backbone/Conv1/kernel" not in tuned and "backbone/block_10_expand/kernel" not in tuned


def test_alpha1_config_uses_the_approximate_file_and_head_phase_only():
  from configs import mobilenet_alpha1
  config = mobilenet_alpha1.get_config()
  assert config.model.alpha == 1.0 and "bnfolded" in config.model.weights
  assert [p["name"] for p in config.phases] == ["head"]
