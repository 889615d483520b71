"""Defaults shared by every model config; a model's file overrides what differs.

Not run directly: use one of the model configs, e.g.
  python launch.py --config=configs/cnn_v3.py
"""

import ml_collections

from cxr_jax.data import splits


def get_config():
  config = ml_collections.ConfigDict()
  # The run's name: its default workdir is workdirs/<name> and the report lists it so.
  config.name = ""
  config.description = ""  # One line for the report and the model card.
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # Folder with train/ and test/, each holding NORMAL/ and PNEUMONIA/ (see README.md).
  config.data.data_dir = "data/chest_xray"
  # "tfds": read the versioned, checksummed `chest_xray_pneumonia` TFDS build of data_dir
  # (built into tfds_data_dir on first use); "folder": decode data_dir's files directly.
  config.data.source = "tfds"
  config.data.tfds_data_dir = "data/tensorflow_datasets"
  config.data.image_size = 128  # Square side the images are resized to.
  config.data.channels = 1  # X-rays are gray; MobileNetV2 repeats to 3 channels itself.
  config.data.val_fraction = splits.DEFAULT_VAL_FRACTION  # Of train/, carved out by patient.
  config.data.split_seed = splits.DEFAULT_SPLIT_SEED
  config.data.max_images_per_class = 0  # > 0 keeps only that many per class (debug runs).
  # Images with a shorter side are skipped with a reason: nothing to see at that size.
  config.data.min_image_side = 32

  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  config.augment.rotation_degrees = 10.0
  config.augment.shift_fraction = 0.1
  config.augment.zoom_fraction = 0.1
  config.augment.brightness = 0.1
  config.augment.contrast = 0.1
  config.augment.horizontal_flip = False

  config.model = ml_collections.ConfigDict()
  config.model.name = ""
  # cxr_jax.ops policy: "auto" (CPU-fast layers on CPU, plain XLA ops elsewhere), "xla", "cpu".
  config.model.ops = "auto"

  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 20
  config.learning_rate = 1e-3
  config.warmup_epochs = 1.0
  config.weight_decay = 1e-4
  # "balanced" weighs each class by n_images / (2 * n_class) in the loss; "none" doesn't.
  config.class_weight = "balanced"
  config.early_stopping_patience = 5  # Epochs without a better validation F1.
  config.log_every_steps = 50
  return config


def apply_variant(config, variant):
  """Applies a named variant given after the config path (`--config=configs/x.py:debug`)."""
  if variant in ("", None):
    return config
  if variant != "debug":
    raise ValueError(f"Unknown config variant {variant!r}; the only variant is 'debug'.")
  # A few steps on a small subset: for tests and for checking a change end to end.
  config.data.max_images_per_class = 24
  config.data.image_size = min(config.data.image_size, 64)
  config.data.val_fraction = 0.25
  config.num_epochs = 2
  config.batch_size = 8
  config.eval_batch_size = 16
  config.warmup_epochs = 0.0
  config.log_every_steps = 2
  if "n_components" in config.model:
    config.model.n_components = 8
  return config
