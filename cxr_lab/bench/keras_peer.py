"""The peer: the same network in Keras (TensorFlow backend) on the same machine."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from cxr_lab.bench import timing

KERAS_MODES = ("auto", "on", "off")


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


def keras_model(keras, alpha: float, image_size: int, dtype: str = "float32",
                frozen_layers: Sequence[str] = ()):
  """keras.applications.MobileNetV2 (no top, avg pooling) + Dropout(0.2) + Dense(1), the
  layers named in `frozen_layers` not trainable (the Flax port uses Keras's names)."""
  policy = keras.config.dtype_policy()
  if dtype == "bfloat16":
    keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    base = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), alpha=alpha,
                                          include_top=False, weights=None, pooling="avg")
    for name in frozen_layers:
      base.get_layer(name).trainable = False
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


def _ways(tf, keras, alpha: float, image_size: int, batch_size: int, dtype: str,
          frozen_layers: Sequence[str]) -> tuple[dict, dict]:
  """(train ways, infer ways): {name: fn() running one step on a fixed random batch}."""
  model = keras_model(keras, alpha, image_size, dtype, frozen_layers)
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
  return train_ways, infer_ways


def _faster_way(kind: str, ways: dict, probe_steps: int) -> tuple[str, dict]:
  """(the way with the fastest probe, its fields: first call s, way, probe ms/step)."""
  probes = {name: _time_keras(fn, 0, probe_steps) for name, fn in ways.items()}
  best = min(probes, key=lambda name: probes[name][2])
  return best, {f"{kind}_compile_s": probes[best][0], f"{kind}_way": best,
                f"{kind}_probe_ms": {name: round(1e3 * p[2] / probe_steps, 1)
                                     for name, p in probes.items()}}


def bench_keras(tf, keras, alpha: float, image_size: int, batch_size: int, warmup: int,
                steps: int, dtype: str = "float32", probe_steps: int = 2,
                frozen_layers: Sequence[str] = ()) -> dict:
  """Keras training and inference rates, each by its faster way (probed on a few steps)."""
  train_ways, infer_ways = _ways(tf, keras, alpha, image_size, batch_size, dtype,
                                 frozen_layers)
  out = {}
  for kind, ways in (("train", train_ways), ("infer", infer_ways)):
    best, fields = _faster_way(kind, ways, probe_steps)
    _, _, seconds = _time_keras(ways[best], warmup, steps)
    out[f"{kind}_img_s"] = timing.rate(batch_size * steps, seconds)
    out[f"{kind}_step_ms"] = 1e3 * seconds / steps
    out.update(fields)
  out["dtype_policy"] = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
  return out


def train_chunks(tf, keras, alpha: float, image_size: int, batch_size: int, warmup: int,
                 dtype: str = "float32", probe_steps: int = 2,
                 frozen_layers: Sequence[str] = ()) -> tuple[Callable[[int], Any], dict]:
  """(run(n): n training steps by the faster way, returning the last loss unsynced; the
  probe's fields), compiled and warmed up, for timing in chunks beside another program."""
  train_ways, _ = _ways(tf, keras, alpha, image_size, batch_size, dtype, frozen_layers)
  best, fields = _faster_way("train", train_ways, probe_steps)
  step = train_ways[best]
  _time_keras(step, warmup, 0)

  def run(n: int):
    out = None
    for _ in range(n):
      out = step()
    return out

  fields["dtype_policy"] = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
  return run, fields
