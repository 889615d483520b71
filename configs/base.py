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
  # "random" patients, or "blocked": one contiguous block of patient ids per file-name
  # series held out (acquisition-order structure; splits.blocked_patient_split).
  config.data.split = splits.DEFAULT_SPLIT_KIND
  config.data.max_images_per_class = 0  # > 0 keeps only that many per class (debug runs).
  # Images with a shorter side are skipped with a reason: nothing to see at that size.
  config.data.min_image_side = 32
  # Fraction of each side cut away before resizing (markers and burnt-in text sit there).
  config.data.crop_border = 0.0

  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  config.augment.rotation_degrees = 10.0
  config.augment.shift_fraction = 0.1
  config.augment.zoom_fraction = 0.1
  config.augment.brightness = 0.1
  config.augment.contrast = 0.1
  # Off unless a config turns them on (see cxr_jax/data/augment.py for their meaning).
  config.augment.crop_scale_min = 1.0
  config.augment.gamma = 1.0
  config.augment.blur_sigma = 0.0
  config.augment.noise_std = 0.0
  config.augment.horizontal_flip = False
  config.augment.border_gain = 1.0
  config.augment.resample_prob = 0.0
  # RandAugment-style: operations drawn per image, and their range (data/augment.py).
  config.augment.policy_ops = 0
  config.augment.policy_magnitude = 0.0

  config.model = ml_collections.ConfigDict()
  config.model.name = ""
  # cxr_jax.ops policy: "auto" (CPU-fast layers on CPU, plain XLA ops elsewhere), "xla", "cpu".
  config.model.ops = "auto"

  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 20
  config.learning_rate = 1e-3
  config.warmup_epochs = 1.0
  config.lr_end_factor = 0.01  # Each phase's cosine schedule ends at this fraction of its peak.
  config.weight_decay = 1e-4
  # "balanced" weighs each class by n_images / (2 * n_class) in the loss; "none" doesn't.
  config.class_weight = "balanced"
  # The validation number that picks the best epoch and drives early stopping:
  # "loss" (log loss), "auc" or "f1" (at 0.5).
  config.selection_metric = "f1"
  config.early_stopping_patience = 5  # Epochs without a better selection metric.
  config.label_smoothing = 0.0
  config.mixup_prob = 0.0  # Fraction of training images mixed with another (mixup).
  config.mixup_alpha = 0.4  # Beta(alpha, alpha) mixing weights.
  config.ema_decay = 0.0  # > 0: validation, selection and the saved model use the EMA weights.
  # The default decision threshold (README: "How the default recipe was chosen"): "0.5"
  # (prior-neutral under the balanced loss), or a rule fitted on validation: "val_f1",
  # "youden", "f1_plateau", "sensitivity_0.95". Every one is reported by evaluate.
  config.operating_point = "0.5"
  # Out-of-distribution score (cxr_jax/evaluation/ood.py): the detector fitted on the
  # training split's features; images scoring above the `accept` quantile of validation
  # are flagged.
  config.ood = ml_collections.ConfigDict()
  # "mahalanobis" measured best on the generated cases (README, "Trust"); or "knn".
  config.ood.kind = "mahalanobis"
  config.ood.accept = 0.99
  config.ood.dims = 256  # Principal directions modelled (the rest as isotropic noise).
  config.ood.k = 10  # Neighbour of the knn detector.
  config.log_every_steps = 50
  return config


def _debug(config):
  """A few steps on a small subset: for tests and for checking a change end to end."""
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
  if config.get("phases"):
    config.phases = [dict(p, num_epochs=1) for p in config.phases]


def _full(config):
  """Fine-tune every layer with BatchNorm trained, after a short frozen-backbone head phase."""
  if not config.get("phases"):
    raise ValueError("Variant 'full' is for the two-phase (pretrained) configs.")
  head = dict(config.phases[0], num_epochs=5)
  config.phases = [head, dict(name="fine_tune", num_epochs=12, learning_rate=3e-4,
                              trainable="all", train_batch_norm=True)]


def _augment_strongly(config):
  """Intensity and crop augmentation for other scanners' contrast, exposure and framing."""
  config.augment.update(dict(brightness=0.15, contrast=0.3, gamma=1.5, blur_sigma=1.0,
                             noise_std=0.03, crop_scale_min=0.7))


def _image_size(size):
  def apply(config):
    config.data.image_size = size
  return apply


# MobileNetV2's parameter groups, input to output: the stem, 17 blocks, the last 1x1 conv.
MOBILENET_V2_GROUPS = 19


def _freeze_first(n_groups):
  """Fine-tunes all but the first n_groups (stem, block 0, ...) of MobileNetV2; they keep
  their ImageNet weights, and the backward pass stops above them (issue #24's lever)."""
  def apply(config):
    if config.model.name != "mobilenet_v2" or not config.get("phases"):
      raise ValueError(f"Variant 'freeze{n_groups}' is for the two-phase MobileNetV2 configs.")
    config.phases = [dict(p, trainable=MOBILENET_V2_GROUPS - n_groups)
                     if p.get("trainable") != "head" else p for p in config.phases]
  return apply


def _longer_fine_tune(config):
  """25 fine-tuning epochs, cosine to zero, an EMA of the weights; no early stopping."""
  if not config.get("phases"):
    raise ValueError("Variant 'long' is for the two-phase (pretrained) configs.")
  config.phases = [p if p.get("trainable") == "head" else dict(p, num_epochs=25)
                   for p in config.phases]
  config.lr_end_factor = 0.0
  config.ema_decay = 0.998
  config.early_stopping_patience = 25


# Keras's alpha=1.0 ImageNet MobileNetV2 as found in weights/ (BatchNorm folded in).
ALPHA1_WEIGHTS = "weights/mobilenet_v2_1.0_224_imagenet_bnfolded_dequant_from_int8_tflite.h5"


def _alpha1(config):
  """MobileNetV2 alpha 1.0; BatchNorm statistics measured on training images first."""
  if config.model.name != "mobilenet_v2":
    raise ValueError("Variant 'a1' is for the MobileNetV2 configs.")
  config.model.alpha = 1.0
  config.model.weights = ALPHA1_WEIGHTS
  config.model.refit_batch_norm = True


def _set(**values):
  def apply(config):
    for key, value in values.items():
      node = config
      *parents, leaf = key.split(".")
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return apply


# Recipe levers, joined with "+" after the config path (configs/mobilenet.py:full+loss+aug):
VARIANTS = {
    "debug": _debug,
    "full": _full,
    "loss": _set(selection_metric="loss"),
    "auc": _set(selection_metric="auc"),
    "f1": _set(selection_metric="f1"),
    "aug": _augment_strongly,
    "crop": _set(**{"data.crop_border": 0.08}),
    "ls": _set(label_smoothing=0.1),
    "mixup": _set(mixup_prob=0.5),
    "ema": _set(ema_decay=0.998),
    "noweight": _set(class_weight="none"),
    "bn99": _set(**{"model.bn_momentum": 0.99}),
    "s128": _image_size(128),
    "s160": _image_size(160),
    "s192": _image_size(192),
    "s224": _image_size(224),
    "blocked": _set(**{"data.split": "blocked"}),
    # Issue #20's invariance levers (docs/results.md): per-image histogram equalisation
    # or percentile windowing inside the model; each side's outer band darkened or
    # brightened up to 1.5x (the classes' median left/right borders differ 1.38x on
    # train/, benchmarks/cues/); 30% of images down- then up-sampled (0.75x to 0.25x).
    "eq": _set(**{"model.intensity": "equalize"}),
    "pct": _set(**{"model.intensity": "percentile"}),
    "border": _set(**{"augment.border_gain": 1.5}),
    "res": _set(**{"augment.resample_prob": 0.3}),
    # The stem and blocks 0-1 (every layer at half the input side) / also blocks 2-3.
    "freeze0": _freeze_first(0),  # Every layer fine-tuned.
    "freeze3": _freeze_first(3),
    "freeze5": _freeze_first(5),
    "noeq": _set(**{"model.intensity": "none"}),
    # RandAugment-style: 2 of 8 intensity and geometry operations per image, half range.
    "randaug": _set(**{"augment.policy_ops": 2, "augment.policy_magnitude": 0.5}),
    "long": _longer_fine_tune,
    "a1": _alpha1,
}


def apply_variant(config, variant):
  """Applies the "+"-joined variants given after the config path (`configs/x.py:debug`).

  Every variant but debug is added to config.name, so each recipe gets its own workdir.
  """
  tokens = [t for t in (variant or "").split("+") if t]
  unknown = [t for t in tokens if t not in VARIANTS]
  if unknown:
    raise ValueError(f"Unknown config variant {unknown[0]!r}; known: {sorted(VARIANTS)} "
                     "(join several with '+').")
  for token in tokens:
    VARIANTS[token](config)
  recipe = [t for t in tokens if t != "debug"]
  if recipe and config.name:
    config.name = f"{config.name}-{'+'.join(recipe)}"
  return config
