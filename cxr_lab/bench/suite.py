"""One benchmark run: the recipe, each width's Flax and Keras rates, the input pipeline."""

from __future__ import annotations

from typing import Callable, Sequence

from cxr_jax.trainers import phases
from cxr_jax import models
from cxr_jax import ops
from cxr_lab.bench import keras_peer
from cxr_lab.bench import network
from cxr_lab.bench import pipeline
from cxr_lab.bench import recipe as recipe_lib
from cxr_lab.bench import timing

PRESETS = {
    "cpu": dict(alphas="0.35,1.0", image_size=224, batch_size=32, steps=10, warmup=2,
                dtype="float32", keras="auto", cached_features=False, eval_images=0,
                pipeline_images=1024),
    # ~2-3 minutes on one H100, most of it compiling.
    "gpu": dict(alphas="0.35", image_size=224, batch_size=256, steps=100, warmup=5,
                dtype="bfloat16", keras="auto", cached_features=True, eval_images=624,
                pipeline_images=2048),
}
# Interleaved Flax/Keras chunks of the recipe's step: enough for a median and quartiles.
REPEATS = 7


def check_settings(alphas, steps: int, warmup: int, dtype: str, keras: str,
                   repeats: int = REPEATS) -> None:
  if keras not in keras_peer.KERAS_MODES:
    raise ValueError(f"keras must be one of {keras_peer.KERAS_MODES}; got {keras!r}")
  if dtype not in network.DTYPES:
    raise ValueError(f"dtype must be one of {tuple(network.DTYPES)}; got {dtype!r}")
  if not alphas:
    raise ValueError("alphas is empty")
  if steps < 1 or warmup < 0:
    raise ValueError(f"need steps >= 1 and warmup >= 0; got {steps}, {warmup}")
  if repeats < 1:
    raise ValueError(f"need repeats >= 1; got {repeats}")


def head_epochs(config) -> int | None:
  """Epochs of the config's cached-feature head phase (None: it has none)."""
  for phase in phases.get_phases(config):
    if phase.cached_features:
      return int(phase.num_epochs)
  return None


def _keras(mode: str, notes: list) -> tuple:
  if mode == "off":
    return None, None
  tf, keras, note = keras_peer.import_keras()
  if tf is None:
    if mode == "on":
      raise RuntimeError(note)
    notes.append(note)
  return tf, keras


def _recipe(config, tf, keras, warmup: int, steps: int, repeats: int, log,
            machine=None) -> dict:
  """The config's recipe and, with Keras and MobileNetV2, its Keras peer interleaved."""
  peer = None
  if tf is not None and config.model.name == "mobilenet_v2":
    def peer(out, flax_run):
      log(f"[bench] the recipe in Keras, {repeats} repeats interleaved with Flax ...")
      return recipe_lib.keras_peer(config, out, flax_run, tf, keras, warmup, steps, repeats)
  log(f"[bench] the recipe of {config.name} ...")
  return recipe_lib.bench_recipe(config, warmup, steps, machine, peer)


def _width(config, alpha, batch, tf, keras, s: dict, log) -> tuple[dict, tuple]:
  """One width's Flax (and Keras) train and inference rates (and evaluation pass)."""
  model, dtype_note = network.make_model(alpha, s["dtype"], s["ops"])
  variables = network.random_variables(model, s["image_size"])
  entry = {"alpha": alpha, "dtype": dtype_note,
           "params": models.param_count(variables["params"])}
  log(f"[bench] alpha {alpha}: Flax ({dtype_note}) ...")
  entry["flax"] = network.bench_flax(model, variables, config, batch, s["warmup"], s["steps"])
  if tf is not None:
    log(f"[bench] alpha {alpha}: Keras ...")
    entry["keras"] = keras_peer.bench_keras(tf, keras, alpha, s["image_size"],
                                            s["batch_size"], s["warmup"], s["steps"],
                                            s["dtype"])
    entry["ratio"] = {k: entry["flax"][f"{k}_img_s"] / entry["keras"][f"{k}_img_s"]
                      for k in ("train", "infer")}
  if s["eval_images"]:
    log(f"[bench] alpha {alpha}: {s['eval_images']}-image evaluation ...")
    entry["eval"] = network.bench_eval(model, variables, s["eval_images"], s["image_size"],
                                       s["eval_batch_size"] or s["batch_size"])
  return entry, (model, variables)


def run(config, alphas: Sequence[float] = (0.35, 1.0), image_size: int = 224,
        batch_size: int = 32, steps: int = 10, warmup: int = 2, dtype: str = "float32",
        keras: str = "auto", ops_impl: str = "auto", cached_features: bool = False,
        cf_images: int | None = None, cf_epochs: int | None = None,
        eval_images: int = 0, eval_batch_size: int | None = None,
        pipeline_images: int = 1024, recipe: bool = True, other_recipes: Sequence = (),
        repeats: int = REPEATS, log: Callable[[str], None] = print) -> dict:
  """Every measurement; returns the result dict that `table.format_table` prints.

  config: the training config whose recipe is timed and whose augmentation, optimizer
  and head phase the width table uses (configs/mobilenet.py). other_recipes: more
  configs whose recipes are timed in the same run, for ratios measured together.
  repeats: the recipe's Flax and Keras chunks of `steps` steps taking turns, for its ratio.
  """
  check_settings(alphas, steps, warmup, dtype, keras, repeats)
  notes: list[str] = []
  tf, keras_mod = _keras(keras, notes)
  settings = dict(alphas=list(alphas), image_size=image_size, batch_size=batch_size,
                  steps=steps, warmup=warmup, dtype=dtype, keras=keras, ops=ops_impl,
                  cpu_kernels=ops.use_cpu_kernels(ops_impl), eval_images=eval_images,
                  eval_batch_size=eval_batch_size, repeats=repeats)
  result = {"settings": settings, "models": [], "notes": notes}
  if recipe:
    result["recipe"] = _recipe(config, tf, keras_mod, warmup, steps, repeats, log)
    result["other_recipes"] = [_recipe(c, tf, keras_mod, warmup, steps, repeats, log,
                                       result["recipe"]["machine"]) for c in other_recipes]
  batch = network.synthetic_batch(batch_size, image_size)
  first = None
  for alpha in alphas:
    entry, built = _width(config, alpha, batch, tf, keras_mod, settings, log)
    result["models"].append(entry)
    first = first or (alpha, *built)
  log("[bench] input pipeline ...")
  result["input_pipeline"] = pipeline.bench_input_pipeline(config, pipeline_images,
                                                           image_size, batch_size, warmup,
                                                           steps)
  epochs = cf_epochs or head_epochs(config)
  if cached_features and epochs:
    alpha, model, variables = first
    log(f"[bench] alpha {alpha}: cached features vs frozen backbone ...")
    images = cf_images or recipe_lib.split_sizes(config)[0]
    result["cached_features"] = dict(alpha=alpha, **network.bench_cached_features(
        model, variables, config, batch, warmup, steps, images, epochs))
  elif cached_features:
    notes.append(f"config {config.name!r} has no cached-feature phase; not timed.")
  result["env"] = timing.environment()  # After Keras, so TensorFlow's version is listed.
  return result
