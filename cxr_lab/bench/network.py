"""The Flax classifier's timings: training and inference steps, the evaluation pass, the
head phase on cached features, and the two depthwise forms."""

from __future__ import annotations

import functools
import math
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.trainers import phases
from cxr_jax.trainers import train_step as step_lib
from cxr_lab.bench import timing
from cxr_jax.inference import batching
from cxr_jax.inference import predictors as predictor_lib
from cxr_jax.models import mobilenet
from cxr_jax.ops import depthwise

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_model(alpha: float, dtype: str = "float32", ops_impl: str = "auto"
               ) -> tuple[nn.Module, str]:
  """The classifier at `alpha` computing in `dtype`; returns (model, how dtype was applied)."""
  kwargs = dict(alpha=alpha, dropout_rate=0.2, ops=ops_impl, weights="none")
  return (mobilenet.MobileNetV2Classifier(dtype=DTYPES[dtype], **kwargs),
          "float32" if dtype == "float32" else f"{dtype} backbone compute, fp32 params and head")


def random_variables(model: nn.Module, image_size: int, channels: int = 1, seed: int = 0
                     ) -> dict:
  """He-scaled random params and unit BatchNorm statistics, drawn on the host."""
  sample = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0), sample)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    shape = leaf.shape
    if name in ("scale", "var"):
      value = np.ones(shape, np.float32)
    elif name in ("kernel", "depthwise_kernel"):
      fan_in = 9 if name == "depthwise_kernel" else int(np.prod(shape[:-1]))
      value = rng.standard_normal(shape, np.float32) * np.float32(math.sqrt(2.0 / fan_in))
    else:
      value = np.zeros(shape, np.float32)
    return jnp.asarray(value, leaf.dtype)

  return dict(jax.tree_util.tree_map_with_path(fill, dict(shapes)))


def make_phase(config, **fields):
  import ml_collections  # pylint: disable=g-import-not-at-top  # train imports it anyway.
  base = dict(name="bench", num_epochs=1, learning_rate=1e-3, trainable="all",
              train_batch_norm=True)
  base.update(fields)
  return ml_collections.ConfigDict(base)


def synthetic_batch(batch_size: int, image_size: int, channels: int = 1, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size, image_size, image_size, channels),
                                dtype=np.uint8),
          "label": (np.arange(batch_size) % 2).astype(np.int32)}


def train_state(model, config, phase, variables, steps_per_epoch: int = 100):
  """A fresh TrainState on copies of `variables`: the step donates (deletes) its buffers."""
  variables = jax.tree_util.tree_map(jnp.copy, variables)
  hparams = step_lib.phase_hparams(config, phase, steps_per_epoch, np.ones(2, np.float32))
  return step_lib.create_state(model, variables, hparams)


def bench_flax(model, variables, config, batch: dict, warmup: int, steps: int) -> dict:
  """Training (all trainable, BN updating, donated) and inference rates of one model."""
  batch_size = batch["label"].shape[0]
  batch = jax.device_put(batch)
  rng = jax.random.PRNGKey(0)
  state = train_state(model, config, make_phase(config), variables)
  step = jax.jit(step_lib.make_train_step(model, train_batch_norm=True), donate_argnums=(0,))
  step, train_compile = timing.compile_timed(step, state, batch, rng)
  state, train_warm, train_s = timing.time_chain(lambda s: step(s, batch, rng)[0], state,
                                          warmup, steps)
  del state

  predict, infer_compile = timing.compile_timed(predictor_lib.make_predict_fn(model), variables,
                                    batch["image"])
  infer_warm, infer_s = timing.time_independent(lambda: predict(variables, batch["image"]),
                                         warmup, steps)
  return {"train_img_s": timing.rate(batch_size * steps, train_s),
          "train_step_ms": 1e3 * train_s / steps, "train_compile_s": train_compile,
          "train_warmup_s": train_warm,
          "infer_img_s": timing.rate(batch_size * steps, infer_s),
          "infer_step_ms": 1e3 * infer_s / steps, "infer_compile_s": infer_compile,
          "infer_warmup_s": infer_warm}


def bench_eval(model, variables, n_images: int, image_size: int, batch_size: int) -> dict:
  """Seconds for `n_images` resident uint8 images -> host probabilities, end to end."""
  predict = predictor_lib.make_predict_fn(model)
  images = synthetic_batch(n_images, image_size, seed=1)["image"]
  resident = jax.block_until_ready(jax.device_put(images))

  def on_device():
    outs = []
    for start in range(0, n_images, batch_size):
      chunk = resident[start:start + batch_size]
      if chunk.shape[0] < batch_size:  # Same padded last batch as eval_batches.
        chunk = jnp.pad(chunk, ((0, batch_size - chunk.shape[0]), (0, 0), (0, 0), (0, 0)))
      outs.append(predict(variables, chunk)[0])
    return np.asarray(jnp.concatenate(outs)[:n_images])

  start = time.perf_counter()
  on_device()  # Compiles the model and the slicing/padding ops.
  first = time.perf_counter() - start
  start = time.perf_counter()
  probs = on_device()
  seconds = time.perf_counter() - start

  # The host path of train/evaluate: numpy DecodedSet, eval_batches, one copy per batch.
  start = time.perf_counter()
  host_probs, _ = batching.predict_batched(predict, variables, images, batch_size)
  host_seconds = time.perf_counter() - start
  assert probs.shape == host_probs.shape == (n_images,)
  return {"images": n_images, "batch_size": batch_size, "seconds": seconds,
          "first_run_s": first, "img_s": timing.rate(n_images, seconds),
          "host_path_seconds": host_seconds}


def bench_cached_features(model, variables, config, batch: dict, warmup: int, steps: int,
                          n_images: int, epochs: int) -> dict:
  """Head phase: cached features vs the frozen backbone every epoch, projected to (N, E)."""
  batch_size = batch["label"].shape[0]
  rng = jax.random.PRNGKey(0)
  phase = make_phase(config, name="head", trainable="head", train_batch_norm=False,
                 cached_features=True)
  batch = jax.device_put(batch)

  # Through the frozen backbone, as the loop runs a head phase without cached_features.
  state = train_state(model, config, phase, variables)
  mask = step_lib.trainable_mask(state.params, phase, model)
  frozen = jax.jit(step_lib.make_train_step(model, mask, train_batch_norm=False),
                   donate_argnums=(0,))
  frozen, frozen_compile = timing.compile_timed(frozen, state, batch, rng)
  state, _, frozen_s = timing.time_chain(lambda s: frozen(s, batch, rng)[0], state, warmup, steps)
  del state

  # The one backbone pass of phases.cached_features (same function, per batch).
  features_fn, feat_compile = timing.compile_timed(phases.make_features_fn(model), variables, batch["image"])
  _, feat_s = timing.time_independent(lambda: features_fn(variables, batch["image"]), warmup, steps)

  # Head steps on cached features.
  feats = {"image": features_fn(variables, batch["image"]), "label": batch["label"]}
  state = train_state(model, config, phase, variables)
  head = jax.jit(step_lib.make_head_step(model, mask), donate_argnums=(0,))
  head, head_compile = timing.compile_timed(head, state, feats, rng)
  state, _, head_s = timing.time_chain(lambda s: head(s, feats, rng)[0], state, warmup, steps)
  del state

  steps_per_epoch = n_images // batch_size
  feature_batches = math.ceil(n_images / batch_size)
  per_frozen, per_feat, per_head = frozen_s / steps, feat_s / steps, head_s / steps
  full = epochs * steps_per_epoch * per_frozen
  cached = feature_batches * per_feat + epochs * steps_per_epoch * per_head
  return {"images": n_images, "epochs": epochs, "batch_size": batch_size,
          "frozen_step_ms": 1e3 * per_frozen, "feature_batch_ms": 1e3 * per_feat,
          "head_step_ms": 1e3 * per_head,
          "frozen_compile_s": frozen_compile, "feature_compile_s": feat_compile,
          "head_compile_s": head_compile,
          "full_s": full, "cached_s": cached, "speedup": full / cached,
          "full_with_compile_s": full + frozen_compile,
          "cached_with_compile_s": cached + feat_compile + head_compile,
          "speedup_with_compile": (full + frozen_compile)
                                  / (cached + feat_compile + head_compile)}


def depthwise_timings(batch: int = 8, size: int = 56, channels: int = 96, stride: int = 1,
                      iters: int = 5, impls: Sequence[str] = ("cpu", "xla")) -> dict:
  """Forward and forward+backward (input and kernel grads) ms per depthwise form (best of iters)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, channels)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, channels, 1)), jnp.float32)
  pad = ((0, 1), (0, 1)) if stride == 2 else ((1, 1), (1, 1))
  results = {}
  for impl in impls:
    conv = functools.partial(depthwise.depthwise_conv3x3, stride=stride, padding=pad, impl=impl)
    fwd = jax.jit(conv)
    bwd = jax.jit(jax.grad(lambda x, k, conv=conv: jnp.sum(jnp.sin(conv(x, k))), argnums=(0, 1)))
    timings = {}
    for name, fn in (("fwd_ms", fwd), ("fwd_bwd_ms", bwd)):
      jax.block_until_ready(fn(x, k))
      best = float("inf")
      for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(x, k))
        best = min(best, time.perf_counter() - start)
      timings[name] = round(best * 1e3, 2)
    results[impl] = timings
  return results
