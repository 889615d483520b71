import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.ops import layers


def assert_same_as_flax(ref, module, x, atol=1e-5):
  """Same variable tree as the Flax module, same outputs, same parameter and input gradients."""
  params = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      module.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(module.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=atol)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  grads = jax.grad(loss(module), argnums=(0, 1))(params, x)
  grads_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("kernel_size,c_in", [((3, 3), 1), ((3, 3), 5), ((1, 1), 4), ((5, 5), 3)])
def test_cpu_conv_matches_flax_conv_values_and_gradients(kernel_size, c_in):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 7, c_in)), jnp.float32)
  assert_same_as_flax(nn.Conv(6, kernel_size), layers.Conv(6, kernel_size, impl="cpu"), x)


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
  assert_same_as_flax(nn.Conv(3, (1, 1), padding="VALID", use_bias=False),
                      layers.Conv1x1(3, impl="cpu"), x, atol=1e-6)


@pytest.mark.parametrize("size,strides", [(9, (2, 2)), (8, (2, 2)), (7, (1, 1))])
@pytest.mark.parametrize("impl", ["cpu", "xla"])
def test_strided_conv_matches_flax_conv(size, strides, impl):
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, size, size + 1, 3)), jnp.float32)
  assert_same_as_flax(nn.Conv(4, (3, 3), strides=strides, padding="SAME", use_bias=False),
                      layers.StridedConv(4, (3, 3), strides=strides, padding="SAME", impl=impl), x)


def test_strided_conv_takes_one_channel_as_the_image_repeated():
  gray = jnp.asarray(np.random.default_rng(4).standard_normal((2, 10, 10, 1)), jnp.float32)
  conv = layers.StridedConv(4, (3, 3), strides=(2, 2), in_features=3, impl="cpu")
  params = conv.init(jax.random.PRNGKey(0), gray)
  assert params["params"]["kernel"].shape == (3, 3, 3, 4)
  rgb = jnp.repeat(gray, 3, axis=-1)
  np.testing.assert_allclose(conv.apply(params, gray), conv.apply(params, rgb),
                             rtol=1e-5, atol=1e-5)
  grad = lambda x: jax.grad(lambda p: jnp.sum(jnp.sin(conv.apply(p, x))))(params)
  np.testing.assert_allclose(grad(gray)["params"]["kernel"], grad(rgb)["params"]["kernel"],
                             rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="input channels"):
    conv.apply(params, jnp.zeros((1, 10, 10, 2)))


@pytest.mark.parametrize("relu6", [False, True])
@pytest.mark.parametrize("impl", ["cpu", "xla"])
def test_batch_norm_act_matches_flax_batch_norm(relu6, impl):
  rng = np.random.default_rng(5)
  # Shifted and scaled so that ReLU6 clips at both ends.
  x = jnp.asarray(rng.standard_normal((4, 5, 3, 6)) * 3 + 1, jnp.float32)
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)
  variables = ref.init(jax.random.PRNGKey(0), x)
  variables = {"params": {"scale": jnp.asarray(rng.uniform(2.5, 4, 6), jnp.float32),
                          "bias": jnp.asarray(rng.standard_normal(6), jnp.float32)},
               "batch_stats": {"mean": jnp.asarray(rng.standard_normal(6), jnp.float32),
                               "var": jnp.asarray(rng.uniform(0.5, 2, 6), jnp.float32)}}
  bn = layers.BatchNormAct(use_running_average=False, momentum=0.9, epsilon=1e-3,
                           relu6=relu6, impl=impl)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
      bn.init(jax.random.PRNGKey(0), x))
  act = (lambda y: jnp.clip(y, 0, 6)) if relu6 else (lambda y: y)

  def run(module, post):
    def loss(params, x):
      y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                x, mutable=["batch_stats"])
      y = post(y)
      return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), (y, updates)
    (_, (y, updates)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        variables["params"], x)
    return y, updates, grads

  y, updates, grads = run(bn, lambda y: y)
  y_ref, updates_ref, grads_ref = run(ref, act)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves((updates, grads)),
                  jax.tree_util.tree_leaves((updates_ref, grads_ref))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  if relu6:
    assert float(jnp.min(y)) == 0.0 and float(jnp.max(y)) == 6.0  # both ends clipped

  # Inference mode: the running statistics, nothing updated.
  infer = bn.clone(use_running_average=True)
  ref_infer = ref.clone(use_running_average=True)
  np.testing.assert_allclose(infer.apply(variables, x), act(ref_infer.apply(variables, x)),
                             rtol=1e-5, atol=1e-5)
