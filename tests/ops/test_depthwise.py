"""The shifted depthwise form (and its hand-written backward) against the grouped conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.ops import depthwise


@pytest.mark.parametrize("size,stride,padding", [
    ((9, 8), 1, "SAME"), ((9, 8), 2, "SAME"), ((8, 8), 2, ((0, 1), (0, 1))),
    ((9, 7), 2, ((1, 1), (1, 1))), ((7, 7), 1, "VALID"), ((10, 9), 2, "VALID"),
    ((6, 5), 1, ((2, 0), (0, 2))),
])
def test_shifted_matches_grouped_values_and_gradients(size, stride, padding):
  rng = np.random.default_rng(sum(size) + stride)
  x = jnp.asarray(rng.standard_normal((2,) + size + (5,)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 1)), jnp.float32)

  def loss(impl):
    def f(x, kernel):
      y = depthwise.depthwise_conv3x3(x, kernel, stride, padding, impl)
      return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

  (_, y), grads = loss("cpu")(x, kernel)
  (_, y_ref), grads_ref = loss("xla")(x, kernel)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for g, g_ref in zip(grads, grads_ref):
    assert g.shape == g_ref.shape
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_errors():
  x = jnp.zeros((1, 5, 5, 2))
  with pytest.raises(ValueError, match="stride"):
    depthwise.depthwise_conv3x3(x, jnp.zeros((3, 3, 2, 1)), stride=3)
  with pytest.raises(ValueError, match="kernel must have shape"):
    depthwise.depthwise_conv3x3(x, jnp.zeros((3, 3, 3, 1)))
  with pytest.raises(ValueError, match="too small"):
    depthwise.depthwise_conv3x3(jnp.zeros((1, 2, 2, 2)), jnp.zeros((3, 3, 2, 1)),
                                padding="VALID", impl="cpu")
  with pytest.raises(ValueError, match="impl"):
    depthwise.depthwise_conv3x3(x, jnp.zeros((3, 3, 2, 1)), impl="fast")
