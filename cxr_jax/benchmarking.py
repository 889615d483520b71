"""Throughput of the MobileNetV2 classifier: Flax vs Keras, input pipeline, cached features.

  python -m cxr_jax.tools.bench               # CPU default: alphas 0.35,1.0, 224x224, batch 32
  python -m cxr_jax.tools.bench --preset=gpu  # batch 256, bfloat16, alpha 0.35, + 624-image eval
  python -m cxr_jax.tools.bench --alphas=0.35 --steps=5 --warmup=1 --keras=off --json=bench.json

One run prints one table:
  * Flax training images/s: the real `train_step.make_train_step` (augmentation on device,
    all parameters trainable, BatchNorm updating, state donated) on a device-resident
    batch; inference images/s: the jitted `predictor.make_predict_fn` (probabilities
    and features, as every command scores). Compile
    times are measured separately (AOT `lower().compile()`), then `--warmup` steps,
    then `--steps` timed steps with one `block_until_ready` at the end.
  * The same network in Keras (`keras.applications.MobileNetV2(..., weights=None,
    pooling='avg')` + Dropout + Dense(1)): training by a `tf.function` step or
    `train_on_batch` (XLA, Keras's default), whichever is faster on this machine;
    inference by `model(x, training=False)` in a `tf.function` or `predict_on_batch`,
    the faster. The Keras step has no augmentation (the Flax one does), so the
    Flax/Keras training ratio errs against Flax. Keras is fed the 3-channel copy
    of the X-ray that keras.applications requires; the Flax classifier takes the
    gray channel (its stem sums the RGB kernel: same function, cheaper). Skipped with a note when
    TensorFlow is not importable (`--keras=auto`).
  * The input pipeline (`batches.train_batches` over resident synthetic uint8
    images, with and without the host->device copy) and the on-device augmentation
    alone, against the training rate: is data the bottleneck?
  * `--cached_features`: the frozen-backbone (head) phase, cached features
    (one backbone pass + E epochs of head steps on features) versus E epochs of
    head-phase steps through the frozen backbone, projected from measured per-step
    times over `--cf_images` images and the config's head-phase epochs.
  * `--eval_images=624`: the test split's size, resident uint8 on device ->
    probabilities on the host, end to end, in seconds.

Weights are random (drawn on the host from the shapes of `jax.eval_shape(init)`:
XLA:CPU would spend ~40 s compiling MobileNetV2's initialisers), which does not
change the speed. Needs JAX, Flax, Optax and what `cxr_jax.train` imports
(ml_collections, orbax-checkpoint, scikit-learn, Pillow); TensorFlow only for Keras.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax import ops
from cxr_jax import train
from cxr_jax import train_step as step_lib
from cxr_jax.data import augment
from cxr_jax.data import batches
from cxr_jax.evaluation import inference
from cxr_jax.evaluation import predictor as predictor_lib
from cxr_jax.models import mobilenet
from cxr_jax.ops import depthwise

PRESETS = {
    "cpu": dict(alphas="0.35,1.0", image_size=224, batch_size=32, steps=10, warmup=2,
                dtype="float32", keras="auto", cached_features=False, eval_images=0,
                pipeline_images=1024),
    # ~2-3 minutes on one H100, most of it compiling.
    "gpu": dict(alphas="0.35", image_size=224, batch_size=256, steps=100, warmup=5,
                dtype="bfloat16", keras="auto", cached_features=True, eval_images=624,
                pipeline_images=2048),
}
KERAS_MODES = ("auto", "on", "off")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The frozen-backbone phase of configs/mobilenet.py, used when the config can't be read.
DEFAULT_HEAD_EPOCHS = 15
# About the Kermany train split less the patient-grouped validation share.
DEFAULT_CF_IMAGES = 4400


# ---------------------------------------------------------------------------
# Model, variables and configuration.


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


def _phase(config, **fields):
  import ml_collections  # pylint: disable=g-import-not-at-top  # train imports it anyway.
  base = dict(name="bench", num_epochs=1, learning_rate=1e-3, trainable="all",
              train_batch_norm=True)
  base.update(fields)
  return ml_collections.ConfigDict(base)


def _head_epochs(config) -> int:
  for phase in (config.get("phases") or []):
    if phase.get("cached_features"):
      return int(phase["num_epochs"])
  return DEFAULT_HEAD_EPOCHS


def synthetic_batch(batch_size: int, image_size: int, channels: int = 1, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (batch_size, image_size, image_size, channels),
                                dtype=np.uint8),
          "label": (np.arange(batch_size) % 2).astype(np.int32)}


# ---------------------------------------------------------------------------
# Timing.


def _compile(jitted, *args) -> tuple[Callable, float]:
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _rate(images: int, seconds: float) -> float:
  return images / seconds if seconds > 0 else float("inf")


def time_chain(fn: Callable, carry, warmup: int, steps: int) -> tuple[Any, float, float]:
  """Runs carry = fn(carry) warmup then steps times; (carry, warmup_s, steps_s)."""
  start = time.perf_counter()
  for _ in range(warmup):
    carry = fn(carry)
  jax.block_until_ready(carry)
  warm = time.perf_counter()
  for _ in range(steps):
    carry = fn(carry)
  jax.block_until_ready(carry)
  return carry, warm - start, time.perf_counter() - warm


def time_independent(fn: Callable, warmup: int, steps: int) -> tuple[float, float]:
  """Runs fn() warmup then steps times, blocking on all outputs at the end only."""
  start = time.perf_counter()
  jax.block_until_ready([fn() for _ in range(warmup)])
  warm = time.perf_counter()
  jax.block_until_ready([fn() for _ in range(steps)])
  return warm - start, time.perf_counter() - warm


# ---------------------------------------------------------------------------
# Flax.


def _train_state(model, config, phase, variables, steps_per_epoch: int = 100):
  """A fresh TrainState on copies of `variables`: the step donates (deletes) its buffers."""
  variables = jax.tree_util.tree_map(jnp.copy, variables)
  hparams = step_lib.phase_hparams(config, phase, steps_per_epoch, np.ones(2, np.float32))
  return step_lib.create_state(model, variables, hparams)


def bench_flax(model, variables, config, batch: dict, warmup: int, steps: int) -> dict:
  """Training (all trainable, BN updating, donated) and inference rates of one model."""
  batch_size = batch["label"].shape[0]
  batch = jax.device_put(batch)
  rng = jax.random.PRNGKey(0)
  state = _train_state(model, config, _phase(config), variables)
  step = jax.jit(step_lib.make_train_step(model, train_batch_norm=True), donate_argnums=(0,))
  step, train_compile = _compile(step, state, batch, rng)
  state, train_warm, train_s = time_chain(lambda s: step(s, batch, rng)[0], state,
                                          warmup, steps)
  del state

  predict, infer_compile = _compile(predictor_lib.make_predict_fn(model), variables,
                                    batch["image"])
  infer_warm, infer_s = time_independent(lambda: predict(variables, batch["image"]),
                                         warmup, steps)
  return {"train_img_s": _rate(batch_size * steps, train_s),
          "train_step_ms": 1e3 * train_s / steps, "train_compile_s": train_compile,
          "train_warmup_s": train_warm,
          "infer_img_s": _rate(batch_size * steps, infer_s),
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
  host_probs, _ = inference.predict_batched(predict, variables, images, batch_size)
  host_seconds = time.perf_counter() - start
  assert probs.shape == host_probs.shape == (n_images,)
  return {"images": n_images, "batch_size": batch_size, "seconds": seconds,
          "first_run_s": first, "img_s": _rate(n_images, seconds),
          "host_path_seconds": host_seconds}


def bench_cached_features(model, variables, config, batch: dict, warmup: int, steps: int,
                          n_images: int, epochs: int) -> dict:
  """Head phase: cached features vs the frozen backbone every epoch, projected to (N, E)."""
  batch_size = batch["label"].shape[0]
  rng = jax.random.PRNGKey(0)
  phase = _phase(config, name="head", trainable="head", train_batch_norm=False,
                 cached_features=True)
  batch = jax.device_put(batch)

  # Through the frozen backbone, as the loop runs a head phase without cached_features.
  state = _train_state(model, config, phase, variables)
  mask = step_lib.trainable_mask(state.params, phase, model)
  frozen = jax.jit(step_lib.make_train_step(model, mask, train_batch_norm=False),
                   donate_argnums=(0,))
  frozen, frozen_compile = _compile(frozen, state, batch, rng)
  state, _, frozen_s = time_chain(lambda s: frozen(s, batch, rng)[0], state, warmup, steps)
  del state

  # The one backbone pass of train.cached_features (same function, per batch).
  features_fn, feat_compile = _compile(train.make_features_fn(model), variables, batch["image"])
  _, feat_s = time_independent(lambda: features_fn(variables, batch["image"]), warmup, steps)

  # Head steps on cached features.
  feats = {"image": features_fn(variables, batch["image"]), "label": batch["label"]}
  state = _train_state(model, config, phase, variables)
  head = jax.jit(step_lib.make_head_step(model, mask), donate_argnums=(0,))
  head, head_compile = _compile(head, state, feats, rng)
  state, _, head_s = time_chain(lambda s: head(s, feats, rng)[0], state, warmup, steps)
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


# ---------------------------------------------------------------------------
# Input pipeline.


def bench_input_pipeline(config, n_images: int, image_size: int, batch_size: int,
                         warmup: int, steps: int) -> dict:
  """Host batching (train_batches), + host->device copy, and on-device augmentation alone."""
  rng = np.random.default_rng(2)
  n_images = max(n_images, batch_size)
  images = rng.integers(0, 256, (n_images, image_size, image_size, 1), dtype=np.uint8)
  data = data_lib.DecodedSet(images, (np.arange(n_images) % 2).astype(np.int32),
                             [""] * n_images, [""] * n_images, skipped=[])

  def epoch(copy: bool) -> tuple[int, float]:
    count, start = 0, time.perf_counter()
    last = None
    for b in batches.train_batches(data, batch_size, seed=0, epoch=0):
      last = jax.device_put(b) if copy else b
      count += batch_size
    jax.block_until_ready(last)
    return count, time.perf_counter() - start

  epoch(copy=True)  # First device_put of the shape, page faults.
  host_n, host_s = epoch(copy=False)
  copy_n, copy_s = epoch(copy=True)

  device_images = jax.device_put(images[:batch_size])
  strengths = {k: jnp.float32(v) for k, v in augment.strengths(config.augment).items()}
  aug = jax.jit(lambda key, x: augment.augment(key, x, strengths))
  key = jax.random.PRNGKey(0)
  aug, aug_compile = _compile(aug, key, device_images)
  _, aug_s = time_independent(lambda: aug(key, device_images), warmup, steps)
  return {"images": n_images, "host_img_s": _rate(host_n, host_s),
          "host_to_device_img_s": _rate(copy_n, copy_s),
          "augment_img_s": _rate(batch_size * steps, aug_s), "augment_compile_s": aug_compile}


# ---------------------------------------------------------------------------
# Keras.


def import_keras() -> tuple[Any, Any, str]:
  """(tf, keras, note); tf and keras are None with the reason in note when unavailable."""
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, None, f"TensorFlow/Keras not importable ({e}); Keras baseline skipped."
  if keras.backend.backend() != "tensorflow":
    return None, None, (f"Keras backend is {keras.backend.backend()!r}, not 'tensorflow' "
                        "(KERAS_BACKEND); Keras baseline skipped.")
  try:  # Share a GPU with JAX instead of TensorFlow grabbing all its memory.
    for gpu in tf.config.list_physical_devices("GPU"):
      tf.config.experimental.set_memory_growth(gpu, True)
  except RuntimeError:
    pass
  return tf, keras, ""


def keras_model(keras, alpha: float, image_size: int, dtype: str = "float32"):
  """keras.applications.MobileNetV2 (no top, avg pooling) + Dropout(0.2) + Dense(1)."""
  policy = keras.config.dtype_policy()
  if dtype == "bfloat16":
    keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    base = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), alpha=alpha,
                                          include_top=False, weights=None, pooling="avg")
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Dropout(0.2)(base(inputs))
    outputs = keras.layers.Dense(1, dtype="float32")(x)
    return keras.Model(inputs, outputs)
  finally:
    keras.config.set_dtype_policy(policy)


def _time_keras(fn: Callable, warmup: int, steps: int) -> tuple[float, float, float]:
  """(first call s, warmup s, steps s) of fn(); fn's result is synced via .numpy()."""
  start = time.perf_counter()
  out = fn()
  np.asarray(out)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(warmup):
    out = fn()
  np.asarray(out)
  warm = time.perf_counter()
  for _ in range(steps):
    out = fn()
  np.asarray(out)
  return first, warm - start, time.perf_counter() - warm


def bench_keras(tf, keras, alpha: float, image_size: int, batch_size: int, warmup: int,
                steps: int, dtype: str = "float32", probe_steps: int = 2) -> dict:
  """Keras training and inference rates, each by its faster way (probed on a few steps)."""
  model = keras_model(keras, alpha, image_size, dtype)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.random((batch_size, image_size, image_size, 3), np.float32))
  y = tf.constant((np.arange(batch_size) % 2).astype(np.float32)[:, None])
  loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
  model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4), loss=loss_fn)
  optimizer = keras.optimizers.AdamW(1e-3, weight_decay=1e-4)

  @tf.function
  def train_step(x, y):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  @tf.function
  def infer(x):
    return model(x, training=False)

  train_ways = {"tf.function": lambda: train_step(x, y),
                f"train_on_batch(jit_compile={model.jit_compile})":
                    lambda: model.train_on_batch(x, y)}
  infer_ways = {"tf.function": lambda: infer(x),
                "predict_on_batch": lambda: model.predict_on_batch(x)}
  out = {}
  for kind, ways in (("train", train_ways), ("infer", infer_ways)):
    probes = {name: _time_keras(fn, 0, probe_steps) for name, fn in ways.items()}
    best = min(probes, key=lambda name: probes[name][2])
    _, warm, seconds = _time_keras(ways[best], warmup, steps)
    out[f"{kind}_img_s"] = _rate(batch_size * steps, seconds)
    out[f"{kind}_step_ms"] = 1e3 * seconds / steps
    out[f"{kind}_compile_s"] = probes[best][0]
    out[f"{kind}_way"] = best
    out[f"{kind}_probe_ms"] = {name: round(1e3 * p[2] / probe_steps, 1)
                               for name, p in probes.items()}
  out["dtype_policy"] = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
  return out


# ---------------------------------------------------------------------------
# Environment and the whole run.


def environment() -> dict:
  dev = jax.devices()[0]
  versions = {"python": platform.python_version(), "jax": jax.__version__}
  for name in ("jaxlib", "flax", "optax", "numpy", "tensorflow", "keras"):
    module = sys.modules.get(name)
    if module is not None:
      versions[name] = getattr(module, "__version__", "?")
  xla_env = {k: v for k, v in os.environ.items()
             if k.startswith(("XLA_", "JAX_", "TF_XLA", "CUDA_VISIBLE", "GLIBC_TUNABLES"))}
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "platform": platform.platform(),
          "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "env": xla_env, "matmul_precision": str(jax.config.jax_default_matmul_precision),
          "versions": versions}


def run(config, alphas: Sequence[float] = (0.35, 1.0), image_size: int = 224,
        batch_size: int = 32, steps: int = 10, warmup: int = 2, dtype: str = "float32",
        keras: str = "auto", ops_impl: str = "auto", cached_features: bool = False,
        cf_images: int = DEFAULT_CF_IMAGES, cf_epochs: int | None = None,
        eval_images: int = 0, eval_batch_size: int | None = None,
        pipeline_images: int = 1024, log: Callable[[str], None] = print) -> dict:
  """Every measurement; returns the result dict that `format_table` prints.

  config: the training config whose augmentation, optimizer and head phase are timed
  (configs/mobilenet.py).
  """
  if keras not in KERAS_MODES:
    raise ValueError(f"keras must be one of {KERAS_MODES}; got {keras!r}")
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {dtype!r}")
  if not alphas:
    raise ValueError("alphas is empty")
  if steps < 1 or warmup < 0:
    raise ValueError(f"need steps >= 1 and warmup >= 0; got {steps}, {warmup}")
  notes = []
  tf = keras_mod = None
  if keras != "off":
    tf, keras_mod, note = import_keras()
    if tf is None:
      if keras == "on":
        raise RuntimeError(note)
      notes.append(note)
  result = {"settings": dict(alphas=list(alphas), image_size=image_size, batch_size=batch_size,
                             steps=steps, warmup=warmup, dtype=dtype, keras=keras,
                             ops=ops_impl, cpu_kernels=ops.use_cpu_kernels(ops_impl)),
            "models": [], "notes": notes}
  batch = synthetic_batch(batch_size, image_size)
  first = None
  for alpha in alphas:
    model, dtype_note = make_model(alpha, dtype, ops_impl)
    variables = random_variables(model, image_size)
    entry = {"alpha": alpha, "dtype": dtype_note,
             "params": models.param_count(variables["params"])}
    log(f"[bench] alpha {alpha}: Flax ({dtype_note}) ...")
    entry["flax"] = bench_flax(model, variables, config, batch, warmup, steps)
    if tf is not None:
      log(f"[bench] alpha {alpha}: Keras ...")
      entry["keras"] = bench_keras(tf, keras_mod, alpha, image_size, batch_size, warmup,
                                   steps, dtype)
      entry["ratio"] = {k: entry["flax"][f"{k}_img_s"] / entry["keras"][f"{k}_img_s"]
                        for k in ("train", "infer")}
    if eval_images:
      log(f"[bench] alpha {alpha}: {eval_images}-image evaluation ...")
      entry["eval"] = bench_eval(model, variables, eval_images, image_size,
                                 eval_batch_size or batch_size)
    result["models"].append(entry)
    if first is None:
      first = (alpha, model, variables)
    else:
      del variables

  log("[bench] input pipeline ...")
  result["input_pipeline"] = bench_input_pipeline(config, pipeline_images, image_size,
                                                  batch_size, warmup, steps)
  if cached_features:
    alpha, model, variables = first
    log(f"[bench] alpha {alpha}: cached features vs frozen backbone ...")
    result["cached_features"] = dict(alpha=alpha, **bench_cached_features(
        model, variables, config, batch, warmup, steps, cf_images,
        cf_epochs or _head_epochs(config)))
  result["env"] = environment()  # After Keras, so TensorFlow's version is listed.
  return result


def _fmt(value, spec: str = ".1f") -> str:
  return "-" if value is None else format(value, spec)


def format_table(result: dict) -> str:
  s = result["settings"]
  env = result["env"]
  lines = [f"MobileNetV2 classifier, {s['image_size']}x{s['image_size']}, batch "
           f"{s['batch_size']}, {s['dtype']}, {s['steps']} timed steps after {s['warmup']} "
           f"warmup; ops {s['ops']} (CPU kernels: {s['cpu_kernels']})",
           f"device: {env['device_kind']} (backend {env['backend']}, {env['device_count']} "
           f"device(s), {env['cpu_count']} CPUs)",
           ""]
  header = (f"{'alpha':>5} | {'train img/s':>11} {'compile s':>9} | {'Keras':>7} "
            f"{'Flax/Keras':>10} | {'infer img/s':>11} {'compile s':>9} | {'Keras':>7} "
            f"{'Flax/Keras':>10}")
  lines += [header, "-" * len(header)]
  for m in result["models"]:
    f, k, r = m["flax"], m.get("keras", {}), m.get("ratio", {})
    lines.append(
        f"{m['alpha']:>5g} | {f['train_img_s']:>11.1f} {f['train_compile_s']:>9.1f} | "
        f"{_fmt(k.get('train_img_s')):>7} {_fmt(r.get('train'), '.2f'):>10} | "
        f"{f['infer_img_s']:>11.1f} {f['infer_compile_s']:>9.1f} | "
        f"{_fmt(k.get('infer_img_s')):>7} {_fmt(r.get('infer'), '.2f'):>10}")
  lines.append("")
  for m in result["models"]:
    lines.append(f"alpha {m['alpha']:g}: {m['params']:,} params; Flax dtype: {m['dtype']}")
    if "keras" in m:
      k = m["keras"]
      lines.append(f"  Keras ({k['dtype_policy']}): train by {k['train_way']} "
                   f"(probe ms/step {k['train_probe_ms']}), infer by {k['infer_way']} "
                   f"(probe ms/step {k['infer_probe_ms']}); first call {k['train_compile_s']:.1f}"
                   f" s / {k['infer_compile_s']:.1f} s; Keras steps have no augmentation and take "
                   "the 3-channel image")
    if "eval" in m:
      e = m["eval"]
      lines.append(f"  eval of {e['images']} resident images -> probabilities: "
                   f"{e['seconds']:.3f} s ({e['img_s']:.0f} img/s, batch {e['batch_size']}); "
                   f"first run incl. compile {e['first_run_s']:.1f} s; host-array path "
                   f"(inference.predict_batched) {e['host_path_seconds']:.3f} s")
  p = result["input_pipeline"]
  slowest = min(m["flax"]["train_img_s"] for m in result["models"])
  feed = min(p["host_to_device_img_s"], p["augment_img_s"])
  lines += ["", f"input pipeline ({p['images']} resident uint8 images): train_batches "
            f"{p['host_img_s']:.0f} img/s, + host->device {p['host_to_device_img_s']:.0f} img/s;"
            f" on-device augmentation alone {p['augment_img_s']:.0f} img/s",
            f"  vs slowest training {slowest:.1f} img/s: "
            + ("data is NOT the bottleneck" if p["host_to_device_img_s"] > slowest
               else "the HOST pipeline is the bottleneck")
            + f" (host->device feed / training = {p['host_to_device_img_s'] / slowest:.1f}x;"
            f" augmentation is inside the train step, {feed / slowest:.1f}x)"]
  c = result.get("cached_features")
  if c:
    lines += ["", f"head phase, alpha {c['alpha']:g}, {c['images']} images x {c['epochs']} "
              f"epochs (projected from per-step times): frozen backbone every epoch "
              f"{c['full_s']:.1f} s ({c['frozen_step_ms']:.1f} ms/step) vs cached features "
              f"{c['cached_s']:.1f} s (backbone {c['feature_batch_ms']:.1f} ms/batch once, "
              f"head {c['head_step_ms']:.2f} ms/step): speed-up {c['speedup']:.1f}x "
              f"({c['speedup_with_compile']:.1f}x counting compiles)"]
  lines += ["", "XLA_FLAGS: " + (env["xla_flags"] or "(none)"),
            "env: " + (", ".join(f"{k}={v}" for k, v in sorted(env["env"].items())
                                 if k != "XLA_FLAGS") or "(none)"),
            "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())]
  lines += [f"note: {n}" for n in result["notes"]]
  return "\n".join(lines)


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


def _time_calls(fn: Callable, images: np.ndarray, repeats: int) -> float:
  """Median seconds of fn(images) over `repeats` calls, after one warm-up call."""
  jax.block_until_ready(fn(images))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(images))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def bench_exported(serving, runtimes: dict, image_shape: tuple[int, int, int],
                   batch_size: int = 32, repeats: int = 20) -> dict:
  """Latency of one image and images/s at `batch_size`: the exported JAX function (plain
  XLA layers, as converted: "jax_export_fn") and each runtime.

  serving: export.Serving; runtimes: {name: callable on uint8 images}.
  """
  rng = np.random.default_rng(0)
  one = rng.integers(0, 256, (1,) + tuple(image_shape), dtype=np.uint8)
  many = rng.integers(0, 256, (batch_size,) + tuple(image_shape), dtype=np.uint8)
  out = {}
  for name, fn in {"jax_export_fn": serving.fn, **runtimes}.items():
    latency = _time_calls(fn, one, repeats)
    batch = _time_calls(fn, many, max(3, repeats // 4))
    out[name] = {"latency_ms": 1e3 * latency, "img_s": batch_size / batch,
                 "batch_size": batch_size}
  return out


def bench_ood_overhead(predictor, detector, images: np.ndarray, repeats: int = 3) -> dict:
  """Seconds to score `images` without the OOD score (probabilities only) and with it
  (probabilities, features and the detector), best of `repeats` after a warm-up."""
  from cxr_jax.evaluation import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  probs_fn = predictor_lib.make_probs_fn(predictor.model)

  def without():
    return inference.predict_batched(probs_fn, predictor.variables, images,
                                     predictor.batch_size)

  def with_score():
    out = predictor.predict(images)
    return detector.score(out.features)

  timings = {}
  for name, fn in (("without_ood_s", without), ("with_ood_s", with_score)):
    fn()
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - start)
    timings[name] = best
  timings["images"] = len(images)
  timings["overhead"] = timings["with_ood_s"] / timings["without_ood_s"] - 1.0
  return timings
