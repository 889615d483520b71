"""BatchNorm statistics measured on images, with what the network computes kept.

Keras's alpha=1.0 file here folds BatchNorm into the convolutions: every layer's mean is 0
and its variance 1 - epsilon, so the statistics say nothing of any data. Training with
batch statistics, or AdaBN, would then change what the network computes. `refit` measures
each BatchNorm's input in inference mode, stores that mean and variance, and rescales the
layer's scale and bias so that inference gives the same outputs as before:

    scale' = scale * s / s0,   bias' = bias + (mean - mean0) * scale / s0,
    s = sqrt(var + eps),       s0 = sqrt(var0 + eps).

Afterwards the statistics are the training images' own, as in a network trained on them.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.ops.layers import BatchNormAct

_COLLECTION = "batch_norm_inputs"


def _record_inputs(next_fun, args, kwargs, context):
  """A method interceptor: sows the first and second moments of each BatchNorm's input."""
  module = context.module
  if isinstance(module, BatchNormAct) and context.method_name == "__call__":
    x = jnp.asarray(args[0], jnp.float32)
    axes = tuple(range(x.ndim - 1))
    module.sow(_COLLECTION, "moments",
               jnp.stack([jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)]))
    module.sow(_COLLECTION, "epsilon", jnp.float32(module.epsilon))
  return next_fun(*args, **kwargs)


def input_moments(model: nn.Module, variables: dict, images01: np.ndarray,
                  batch_size: int = 64) -> dict:
  """{BatchNorm path: (mean, var, epsilon)} of its input over `images01`, inference mode."""

  @jax.jit
  def moments(v, x):
    with nn.intercept_methods(_record_inputs):
      _, state = model.apply(v, x, train=False, mutable=[_COLLECTION])
    return state[_COLLECTION]

  sums, count = None, 0
  for start in range(0, len(images01), batch_size):
    x = jnp.asarray(images01[start:start + batch_size], jnp.float32)
    got = flax.traverse_util.flatten_dict(flax.core.unfreeze(moments(variables, x)))
    weighted = {k: np.asarray(v[0], np.float64) * len(x) for k, v in got.items()}
    sums = weighted if sums is None else {k: sums[k] + weighted[k] for k in sums}
    count += len(x)
  out = {}
  for key in {k[:-1] for k in sums}:
    first, second = sums[key + ("moments",)] / count
    out[key] = (first, np.maximum(second - first ** 2, 0.0),
                float(sums[key + ("epsilon",)] / count))
  return out


def refit(model: nn.Module, variables: dict, images01: np.ndarray, batch_size: int = 64
          ) -> dict:
  """`variables` with every BatchNorm's statistics measured on `images01`, same function."""
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))
  stats = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["batch_stats"]))
  measured = input_moments(model, variables, images01, batch_size)
  if {k + ("mean",) for k in measured} != {k for k in stats if k[-1] == "mean"}:
    raise ValueError("BatchNorm layers measured and held differ: "
                     f"{sorted(set(k[:-1] for k in stats) ^ set(measured))[:3]}")
  for path, (mean, var, eps) in measured.items():
    mean0 = np.asarray(stats[path + ("mean",)], np.float64)
    s0 = np.sqrt(np.asarray(stats[path + ("var",)], np.float64) + eps)
    scale0 = np.asarray(params[path + ("scale",)], np.float64)
    bias0 = np.asarray(params[path + ("bias",)], np.float64)
    params[path + ("scale",)] = jnp.asarray(scale0 * np.sqrt(var + eps) / s0, jnp.float32)
    params[path + ("bias",)] = jnp.asarray(bias0 + (mean - mean0) * scale0 / s0, jnp.float32)
    stats[path + ("mean",)] = jnp.asarray(mean, jnp.float32)
    stats[path + ("var",)] = jnp.asarray(var, jnp.float32)
  return {**variables, "params": flax.traverse_util.unflatten_dict(params),
          "batch_stats": flax.traverse_util.unflatten_dict(stats)}
