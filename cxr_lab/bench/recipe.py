"""The step `make train` runs, against this machine's two roofs and a Keras peer.

Everything comes from the training config (default configs/mobilenet.py): the input
size and channels, the batch, the model and its compute dtype, and the phase that costs
the time (the last one that trains the backbone): its trainable layers, BatchNorm
updating, EMA and augmentation strengths, all as train.py sets them. Around the step:
the validation pass at the config's evaluation batch and a resume point written by
`checkpoints.RunCheckpoints`, the two per-epoch costs beside the steps; their sum
projects an epoch and the phase.

The roofs: XLA's cost analysis of the compiled step gives its FLOPs and its bytes
accessed (an upper bound on memory traffic, see `timing.cost`); divided by this
machine's measured fp32 matmul FLOP/s and streaming bytes/s (`timing.machine_roofs`),
they give the fastest the step could run if it were bound by compute alone or by
memory alone, and the fraction of each reached.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any, Callable

import flax
import jax
import ml_collections
import numpy as np

from cxr_jax.trainers import phases
from cxr_jax import checkpoints
from cxr_jax import models
from cxr_jax.trainers import train_step as step_lib
from cxr_lab.bench import network
from cxr_lab.bench import timing
from cxr_jax.inference import batching
from cxr_jax.inference import predictors as predictor_lib
from cxr_jax.models import mobilenet_v2

# The Kermany train/ split (1,341 NORMAL + 3,875 PNEUMONIA), when no data is read.
KERMANY_TRAIN_IMAGES = 5216


def costly_phase(config) -> ml_collections.ConfigDict:
  """The last phase that trains through the backbone (not the cached-feature head)."""
  costly = [p for p in phases.get_phases(config) if not p.get("cached_features", False)]
  if not costly:
    raise ValueError(f"config {config.name!r} has no phase that trains the backbone.")
  return costly[-1]


def frozen_layer_names(model, params, phase) -> list[str]:
  """Names of the layers (the modules holding parameters) the phase leaves frozen."""
  mask = step_lib.trainable_mask(params, phase, model)
  if mask is None:
    return []
  frozen = []
  for path, trainable in jax.tree_util.tree_flatten_with_path(mask)[0]:
    layer = getattr(path[-2], "key", str(path[-2]))
    if not trainable and layer not in frozen:
      frozen.append(layer)
  return frozen


def _model(config):
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  if "weights" in model_config:
    model_config.weights = "none"  # Random weights time the same; no file is read.
  return models.create_model(model_config)


def time_step(config, warmup: int, steps: int) -> dict:
  """The costly phase's train step: time, compile, cost analysis."""
  model = _model(config)
  size, channels, batch_size = config.data.image_size, config.data.channels, config.batch_size
  variables = network.random_variables(model, size, channels)
  phase = costly_phase(config)
  batch = jax.device_put(network.synthetic_batch(batch_size, size, channels))
  rng = jax.random.PRNGKey(0)
  state = network.train_state(model, config, phase, variables)
  mask = step_lib.trainable_mask(state.params, phase, model)
  step = step_lib.jit_phase_step(model, mask, phase, config)
  step, compile_s = timing.compile_timed(step, state, batch, rng)
  advance = lambda s: step(s, batch, rng)[0]
  state, _, seconds = timing.time_chain(advance, state, warmup, steps)
  return {"model": model, "variables": variables, "state": state, "phase": phase,
          "run": timing.chained(advance, state),
          "step_s": seconds / steps, "compile_s": compile_s, **timing.cost(step),
          "frozen_layers": frozen_layer_names(model, variables["params"], phase),
          "trainable": phase.trainable}


def time_validation(model, variables, n_images: int, config) -> float:
  """Seconds of one validation pass (resident images -> host probabilities)."""
  size, channels = config.data.image_size, config.data.channels
  predict = predictor_lib.make_probs_fn(model)
  images = network.synthetic_batch(n_images, size, channels, seed=1)["image"]
  batching.predict_batched(predict, variables, images[:config.eval_batch_size],
                            config.eval_batch_size)  # Compiles.
  start = time.perf_counter()
  batching.predict_batched(predict, variables, images, config.eval_batch_size)
  return time.perf_counter() - start


def time_checkpoint(state, variables, repeats: int = 2) -> float:
  """Seconds of one resume point (the state and the best variables), as train.py saves."""
  state_dict = jax.device_get(flax.serialization.to_state_dict(state))
  best = jax.device_get(variables)
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpoints.RunCheckpoints(workdir)
    try:
      times = []
      for epoch in range(1, repeats + 2):
        start = time.perf_counter()
        ckpt.save(epoch, state_dict, best, {"progress": {"epoch": epoch}, "best": {}})
        times.append(time.perf_counter() - start)
    finally:
      ckpt.close()
  return float(np.median(times[1:]))  # The first save also creates the directories.


def split_sizes(config, n_images: int = KERMANY_TRAIN_IMAGES) -> tuple[int, int]:
  """(train, validation) image counts of the config's split of `n_images`."""
  n_val = int(round(n_images * config.data.val_fraction))
  return n_images - n_val, n_val


def roofs(step: dict, machine: dict) -> dict:
  """The step's compute and memory roofs and the fraction of each reached."""
  compute_s = step["flops"] / machine["matmul_flop_s"]
  memory_s = step["bytes"] / machine["stream_bytes_s"]
  return {"compute_roof_s": compute_s, "memory_roof_s": memory_s,
          "compute_fraction": compute_s / step["step_s"],
          "memory_fraction": memory_s / step["step_s"],
          "flop_s": step["flops"] / step["step_s"],
          "bytes_s": step["bytes"] / step["step_s"]}


def bench_recipe(config, warmup: int, steps: int, machine: dict | None = None,
                 peer: Callable[[dict, Callable[[int], Any]], dict] | None = None) -> dict:
  """The recipe's step, validation pass, resume point, epoch projection and roofs.

  peer(result, run): a peer's timing, under "keras", given run(n) (n more Flax steps) so
  that it can time the Flax step beside its own without compiling it again.
  """
  step = time_step(config, warmup, steps)
  n_train, n_val = split_sizes(config)
  val_s = time_validation(step["model"], step["variables"], n_val, config)
  ckpt_s = time_checkpoint(step["state"], step["variables"])
  steps_per_epoch = n_train // config.batch_size
  epoch_s = steps_per_epoch * step["step_s"] + val_s + ckpt_s
  phase = step["phase"]
  machine = machine or timing.machine_roofs()
  out = {"config": config.name, "phase": phase.name, "trainable": step["trainable"],
         "train_batch_norm": bool(phase.train_batch_norm),
         "image_size": config.data.image_size, "batch_size": config.batch_size,
         "dtype": str(config.model.dtype) if "dtype" in config.model else "float32",
         "step_ms": 1e3 * step["step_s"], "train_img_s": config.batch_size / step["step_s"],
         "compile_s": step["compile_s"], "flops_per_step": step["flops"],
         "bytes_per_step": step["bytes"], "frozen_layers": step["frozen_layers"],
         "train_images": n_train, "val_images": n_val, "validation_s": val_s,
         "checkpoint_s": ckpt_s, "epoch_s": epoch_s, "epochs": int(phase.num_epochs),
         "phase_s": epoch_s * int(phase.num_epochs), "machine": machine,
         **roofs(step, machine)}
  if peer is not None:
    out["keras"] = peer(out, step["run"])
  return out


def keras_peer(config, recipe: dict, flax_run: Callable[[int], Any], tf, keras, warmup: int,
               steps: int, repeats: int) -> dict:
  """Keras on the same recipe (size, batch, the same layers frozen; MobileNetV2 only).

  After both are compiled and warm, `repeats` chunks of `steps` steps alternate: Flax,
  Keras, Flax, ... (`timing.interleaved`), so that each repeat's two chunks meet the same
  machine load. "ratio" is the median per-repeat Flax/Keras rate ratio; its spread says
  how much the load still moved it.
  """
  from cxr_lab.bench import keras_peer as peer  # pylint: disable=g-import-not-at-top
  if config.model.name != "mobilenet_v2":
    raise ValueError(f"The Keras peer is MobileNetV2's; config {config.name!r} is "
                     f"{config.model.name!r}.")
  backbone = set(sum(mobilenet_v2.block_layer_names(), []))
  frozen = [name for name in recipe["frozen_layers"] if name in backbone]
  keras_run, out = peer.train_chunks(tf, keras, float(config.model.alpha),
                                     config.data.image_size, config.batch_size, warmup,
                                     frozen_layers=frozen)
  chunks = {"flax": lambda: flax_run(steps), "keras": lambda: keras_run(steps)}
  seconds = timing.interleaved(chunks, repeats,
                               {"flax": jax.block_until_ready, "keras": np.asarray})
  summary = timing.ratio_summary(seconds["flax"], seconds["keras"])
  flax_s, keras_s = (float(np.median(seconds[k])) for k in ("flax", "keras"))
  out.update(frozen_layers=frozen, train_step_ms=1e3 * keras_s / steps,
             train_img_s=timing.rate(config.batch_size * steps, keras_s),
             ratio=summary["median"], ratio_iqr=summary["iqr"], ratio_range=summary["range"],
             interleaved={"repeats": repeats, "steps": steps, "flax_s": seconds["flax"],
                          "keras_s": seconds["keras"], "ratios": summary["ratios"],
                          "flax_step_ms": 1e3 * flax_s / steps,
                          "keras_step_ms": 1e3 * keras_s / steps})
  return out
