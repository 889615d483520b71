"""Every config value checked before any data is read; each error names the key.

  config_checks.check(config)   # raises ConfigError("config.batch_size=0: ...")
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax

from cxr_jax import data as data_lib
from cxr_jax import models
from cxr_jax import ops
from cxr_jax.data import augment
from cxr_jax.data import splits
from cxr_jax.models import intensity
from cxr_jax.fits import fit
from cxr_jax.trainers import phases

SELECTION_METRICS = ("loss", "auc", "f1")
CLASS_WEIGHTS = ("balanced", "none")
MIN_IMAGE_SIZE = 32  # Five 2x2 poolings (cnn_v3) and MobileNetV2 (as Keras) need 32 px.


class ConfigError(ValueError):
  """A config value outside what the project accepts."""


def _fail(key: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"config.{key}={value!r}: must be {allowed}.")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(config, key: str, low: int) -> None:
  value = _get(config, key)
  if not _is_int(value) or value < low:
    _fail(key, value, f"an integer >= {low}")


def _number_in(config, key: str, low: float, high: float, low_open: bool = False,
               high_open: bool = False) -> None:
  value = _get(config, key)
  ok = _is_number(value) and (value > low if low_open else value >= low) and (
      value < high if high_open else value <= high)
  if not ok:
    _fail(key, value, f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                      f"{')' if high_open else ']'}")


def _one_of(config, key: str, allowed) -> None:
  value = _get(config, key)
  if value not in allowed:
    _fail(key, value, f"one of {tuple(allowed)}")


def _get(config, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key} is missing.")
    node = node[part]
  return node


def _check_data(config, for_training: bool) -> None:
  data = config.data
  if not isinstance(_get(config, "data.data_dir"), str) or not data.data_dir:
    _fail("data.data_dir", data.data_dir, "a folder")
  if not os.path.isdir(data.data_dir):
    raise ConfigError(f"config.data.data_dir={data.data_dir!r} does not exist (it must hold "
                      "train/ and test/, each with NORMAL/ and PNEUMONIA/; see README.md).")
  if for_training and not os.path.isdir(os.path.join(data.data_dir, "train")):
    raise ConfigError(f"config.data.data_dir={data.data_dir!r} has no train/ folder.")
  _one_of(config, "data.source", data_lib.SOURCES)
  _int_at_least(config, "data.image_size", MIN_IMAGE_SIZE)
  _one_of(config, "data.channels", (1, 3))
  _number_in(config, "data.val_fraction", 0.0, 1.0, low_open=True, high_open=True)
  _int_at_least(config, "data.split_seed", 0)
  _one_of(config, "data.split", splits.SPLIT_KINDS)
  _int_at_least(config, "data.max_images_per_class", 0)
  _int_at_least(config, "data.min_image_side", 1)
  _number_in(config, "data.crop_border", 0.0, 0.4)
  if not isinstance(_get(config, "data.tfds_data_dir"), str):
    _fail("data.tfds_data_dir", data.tfds_data_dir, "a folder")


_AUGMENT_RANGES = {"rotation_degrees": (0.0, 180.0), "shift_fraction": (0.0, 0.5),
                   "zoom_fraction": (0.0, 0.9), "crop_scale_min": (0.05, 1.0),
                   "brightness": (0.0, 1.0), "contrast": (0.0, 1.0), "gamma": (1.0, 4.0),
                   "blur_sigma": (0.0, 3.0), "noise_std": (0.0, 0.5),
                   "border_gain": (1.0, 4.0), "resample_prob": (0.0, 1.0),
                   "policy_ops": (0, len(augment.POLICY_RANGES)),
                   "policy_magnitude": (0.0, 1.0)}


def _check_augment(config) -> None:
  for key in augment.STRENGTHS:
    _number_in(config, f"augment.{key}", *_AUGMENT_RANGES[key])
  for key in ("enabled", "horizontal_flip"):
    if not isinstance(_get(config, f"augment.{key}"), bool):
      _fail(f"augment.{key}", config.augment[key], "True or False")


def _check_phase(config, i: int, phase, model_name: str) -> None:
  key = f"phases[{i}]"
  for field in ("name", "num_epochs", "learning_rate", "trainable", "train_batch_norm"):
    if field not in phase:
      raise ConfigError(f"config.{key}.{field} is missing.")
  if not _is_int(phase["num_epochs"]) or phase["num_epochs"] < 1:
    _fail(f"{key}.num_epochs", phase["num_epochs"], "an integer >= 1")
  lr = phase["learning_rate"]
  if not _is_number(lr) or not 0 < lr <= 1:
    _fail(f"{key}.learning_rate", lr, "a number in (0, 1]")
  trainable = phase["trainable"]
  if not (trainable in ("all", "head") or (_is_int(trainable) and trainable >= 0)):
    _fail(f"{key}.trainable", trainable, "'all', 'head' or an integer >= 0")
  if _is_int(trainable) and model_name != "mobilenet_v2":
    _fail(f"{key}.trainable", trainable, f"'all' or 'head' for {model_name}")
  if phase.cached_features and (trainable != "head" or phase["train_batch_norm"]):
    raise ConfigError(f"config.{key}.cached_features=True needs trainable='head' and "
                      "train_batch_norm=False (the backbone must not change).")


def _check_training(config) -> None:
  _int_at_least(config, "batch_size", 1)
  _int_at_least(config, "eval_batch_size", 1)
  n_devices = jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % n_devices:
      raise ConfigError(f"config.{key}={config[key]} must be divisible by the {n_devices} "
                        "devices the batch is split over.")
  _int_at_least(config, "num_epochs", 1)
  _number_in(config, "learning_rate", 0.0, 1.0, low_open=True)
  _number_in(config, "warmup_epochs", 0.0, 1000.0)
  _number_in(config, "weight_decay", 0.0, 1.0)
  _number_in(config, "lr_end_factor", 0.0, 1.0)
  _int_at_least(config, "early_stopping_patience", 1)
  _int_at_least(config, "log_every_steps", 1)
  for key, high in (("label_smoothing", 0.5), ("mixup_prob", 1.0), ("ema_decay", 0.99999)):
    _number_in(config, key, 0.0, high, high_open=key == "label_smoothing")
  _number_in(config, "mixup_alpha", 0.0, 10.0, low_open=True)
  if "phases" in config:
    for i, phase in enumerate(phases.get_phases(config)):
      _check_phase(config, i, phase, config.model.name)


def _check_evaluation(config) -> None:
  _int_at_least(config, "seed", 0)
  point = _get(config, "operating_point")
  if point not in fit.OPERATING_POINTS and not str(point).startswith("sensitivity_"):
    _fail("operating_point", point, f"one of {fit.OPERATING_POINTS} or 'sensitivity_<target>'")
  _one_of(config, "selection_metric", SELECTION_METRICS)
  _one_of(config, "class_weight", CLASS_WEIGHTS)
  for key in ("name", "description"):
    if not isinstance(_get(config, key), str):
      _fail(key, config[key], "a string")
  if not isinstance(_get(config, "tta"), bool):
    _fail("tta", config.tta, "true or false")
  _one_of(config, "ood.kind", ("mahalanobis", "knn"))
  _number_in(config, "ood.accept", 0.5, 1.0, low_open=True)
  _int_at_least(config, "ood.dims", 1)
  _int_at_least(config, "ood.k", 1)


# Each kind's own model keys (their values are checked below where a range applies).
MODEL_KEYS = {"cnn_baseline": ("conv_features", "dense_features"),
              "cnn_v2": ("block_features", "convs_per_block", "dense_features", "dropout_rate"),
              "cnn_v3": ("block_features", "convs_per_block", "dense_features", "dropout_rate"),
              "mobilenet_v2": ("alpha", "weights", "weights_size", "dropout_rate", "bn_momentum",
                               "intensity"),
              "pca_logreg": ("n_components", "whiten", "c_grid"),
              "ensemble": ("members",)}


def _check_model(config) -> None:
  name = _get(config, "model.name")
  if name not in models.names():
    _fail("model.name", name, f"one of {models.names()}")
  for key in MODEL_KEYS.get(name, ()):
    _get(config, f"model.{key}")
  if models.get(name).trains_by_gradient:
    _one_of(config, "model.ops", ops.IMPLS)
    if not isinstance(_get(config, "model.refit_batch_norm"), bool):
      _fail("model.refit_batch_norm", config.model.refit_batch_norm, "True or False")
  if name == "mobilenet_v2":
    _number_in(config, "model.alpha", 0.0, 2.0, low_open=True)
    _one_of(config, "model.intensity", intensity.KINDS)
    _number_in(config, "model.bn_momentum", 0.0, 1.0, high_open=True)
    weights = config.model.weights
    if weights not in ("imagenet", "none") and not os.path.isfile(weights):
      raise ConfigError(f"config.model.weights={weights!r}: no such file (use 'imagenet' for "
                        "Keras's file found by name, a .h5 path, or 'none').")
  if name == "pca_logreg":
    _int_at_least(config, "model.n_components", 1)
    grid = config.model.c_grid
    if not grid or not all(_is_number(c) and c > 0 for c in grid):
      _fail("model.c_grid", grid, "a non-empty list of numbers > 0")


def check(config, for_training: bool = True) -> None:
  """Raises ConfigError naming the first key whose value is not accepted."""
  _check_model(config)
  _check_data(config, for_training)
  _check_evaluation(config)
  if models.get(config.model.name).trains_by_gradient:  # Else the training keys are unused.
    _check_augment(config)
    _check_training(config)
