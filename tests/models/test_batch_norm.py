"""BatchNorm statistics measured on images: the same function, the data's own statistics."""

import flax
import jax
import numpy as np

from cxr_jax.models import batch_norm
from cxr_jax.models import mobilenet


def _folded_like_model():
  """A small MobileNetV2 classifier whose statistics say nothing of the data (as in a file
  with BatchNorm folded in), and images on which its layers' inputs are far from them."""
  model = mobilenet.MobileNetV2Classifier(alpha=0.35, weights="none", ops="xla")
  rng = np.random.default_rng(0)
  images = rng.uniform(0.3, 0.9, (8, 32, 32, 1)).astype(np.float32)
  variables = flax.core.unfreeze(model.init(jax.random.PRNGKey(0), images[:1], train=False))
  variables.pop("intermediates", None)
  return model, variables, images


def _infer(model, variables, images, batch_stats_from_batch: bool):
  out = model.apply(variables, images, train=False, train_batch_norm=batch_stats_from_batch,
                    mutable=["batch_stats"] if batch_stats_from_batch else False)
  return np.asarray(out[0] if batch_stats_from_batch else out)


def test_refit_keeps_the_function_and_makes_the_statistics_the_datas():
  model, variables, images = _folded_like_model()
  before = _infer(model, variables, images, False)
  # Batch statistics differ from the stored ones: training mode computes something else.
  assert np.max(np.abs(_infer(model, variables, images, True) - before)) > 1e-2
  refitted = batch_norm.refit(model, variables, images, batch_size=4)
  after = _infer(model, refitted, images, False)
  np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
  # The stored statistics are now those of these images: normalising each layer by the
  # batch's own statistics (the whole set in one batch) computes the same outputs.
  np.testing.assert_allclose(_infer(model, refitted, images, True), before, rtol=2e-3,
                             atol=2e-3)


def test_input_moments_weigh_every_image_once_whatever_the_batches():
  model, variables, images = _folded_like_model()
  uneven = batch_norm.input_moments(model, variables, images, batch_size=3)  # 3 + 3 + 2
  whole = batch_norm.input_moments(model, variables, images, batch_size=8)
  n_layers = sum(1 for k in flax.traverse_util.flatten_dict(variables["batch_stats"])
                 if k[-1] == "mean")
  assert len(whole) == n_layers
  for path, (mean, var, eps) in whole.items():
    np.testing.assert_allclose(uneven[path][0], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(uneven[path][1], var, rtol=1e-3, atol=1e-5)
    assert eps == uneven[path][2] > 0 and np.all(var >= 0)
