import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import layers


@pytest.mark.parametrize("kernel_size,c_in", [((3, 3), 1), ((3, 3), 5), ((1, 1), 4), ((5, 5), 3)])
def test_cpu_conv_matches_flax_conv_values_and_gradients(kernel_size, c_in):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 7, c_in)), jnp.float32)
  ref, fast = nn.Conv(6, kernel_size), layers.Conv(6, kernel_size, impl="cpu")
  params = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      fast.init(jax.random.PRNGKey(0), x))
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  g_fast = jax.grad(loss(fast), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_max_pool_matches_flax_and_drops_odd_edges():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 6, 3)), jnp.float32)
  np.testing.assert_array_equal(layers.max_pool_2x2(x, impl="cpu"),
                                nn.max_pool(x, (2, 2), strides=(2, 2)))
  g = jax.grad(lambda x: jnp.sum(layers.max_pool_2x2(x, impl="cpu") ** 2))(x)
  g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6)


def test_unknown_impl_is_an_error():
  with pytest.raises(ValueError, match="impl"):
    layers.max_pool_2x2(jnp.zeros((1, 2, 2, 1)), impl="fastest")


def test_cpu_1x1_conv_matches_flax_conv():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 4, 7)), jnp.float32)
  ref = nn.Conv(3, (1, 1), padding="VALID", use_bias=False)
  params = ref.init(jax.random.PRNGKey(0), x)
  fast = layers.Conv1x1(3, impl="cpu")
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      fast.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-6)
  loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, x)))
  np.testing.assert_allclose(jax.grad(loss(fast))(params)["params"]["kernel"],
                             jax.grad(loss(ref))(params)["params"]["kernel"], rtol=1e-4, atol=1e-6)
