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
  # BatchNorm statistics measured on training images before training, the function kept
  # (models/batch_norm.py): for weight files with BatchNorm folded in (`:a1`).
  config.model.refit_batch_norm = False

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
  # Scoring (evaluate, predict, the report, the page) averages the probabilities over small
  # shifts and scales (inference/predictors.py TTA_VIEWS); calibration, OOD fits and exported
  # files use the network's one view. A flag overrides it (--tta / --notta).
  config.tta = False
  # Out-of-distribution score (cxr_jax/fits/ood.py): the detector fitted on the
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
  if "phases" in config:
    config.phases = [dict(p, num_epochs=1) for p in config.phases]


def _two_phase(variant: str, config) -> None:
  if "phases" not in config:
    raise ValueError(f"Variant {variant!r} is for the two-phase (pretrained) configs.")


def _fine_tune(variant: str, **fields):
  """The fine-tuning phase (every phase but the head's) with `fields` changed."""
  def apply(config):
    _two_phase(variant, config)
    config.phases = [p if p["trainable"] == "head" else dict(p, **fields)
                     for p in config.phases]
  return apply


# MobileNetV2's parameter groups, input to output: the stem, 17 blocks, the last 1x1 conv.
MOBILENET_V2_GROUPS = 19


def _freeze_first(n_groups):
  """Fine-tunes all but the first n_groups (stem, block 0, ...) of MobileNetV2; they keep
  their ImageNet weights, and the backward pass stops above them."""
  def apply(config):
    if config.model.name != "mobilenet_v2":
      raise ValueError(f"Variant 'freeze{n_groups}' is for the MobileNetV2 configs.")
    _fine_tune(f"freeze{n_groups}", trainable=MOBILENET_V2_GROUPS - n_groups)(config)
  return apply


def _last6(config):
  """224 px; a 15-epoch head, then 8 epochs of the last 6 blocks with BatchNorm frozen
  (momentum 0.999), chosen by validation F1: the project's first MobileNetV2 recipe."""
  _two_phase("last6", config)
  config.data.image_size = 224
  config.model.bn_momentum = 0.999
  config.phases = [dict(config.phases[0], num_epochs=15),
                   dict(name="fine_tune", num_epochs=8, learning_rate=2e-4, trainable=6,
                        train_batch_norm=False)]
  config.selection_metric = "f1"


def _full(config):
  """A 5-epoch head, then every layer (trainable "all") for 12 epochs at 3e-4, BN trained."""
  _two_phase("full", config)
  config.phases = [dict(config.phases[0], num_epochs=5),
                   dict(name="fine_tune", num_epochs=12, learning_rate=3e-4, trainable="all",
                        train_batch_norm=True)]


def _set(**values):
  def apply(config):
    for key, value in values.items():
      node = config
      *parents, leaf = key.split(".")
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return apply


def _then(*variants):
  def apply(config):
    for variant in variants:
      variant(config)
  return apply


# Keras's alpha=1.0 ImageNet MobileNetV2 as found in weights/ (BatchNorm folded in).
ALPHA1_WEIGHTS = "weights/mobilenet_v2_1.0_224_imagenet_bnfolded_dequant_from_int8_tflite.h5"
_ALPHA1 = {"model.alpha": 1.0, "model.weights": ALPHA1_WEIGHTS, "model.refit_batch_norm": True}
# Intensity and crop augmentation for other scanners' contrast, exposure and framing.
_STRONG = {"augment.brightness": 0.15, "augment.contrast": 0.3, "augment.gamma": 1.5,
           "augment.blur_sigma": 1.0, "augment.noise_std": 0.03, "augment.crop_scale_min": 0.7}
# Without the acquisition levers: no equalisation, border or resolution augmentation.
_NO_ACQUISITION = {"model.intensity": "none", "augment.border_gain": 1.0,
                   "augment.resample_prob": 0.0}

# Recipe levers, joined with "+" after the config path (configs/mobilenet.py:aug+s224), one
# line each. docs/results.md measures them.
VARIANTS = {
    "debug": _debug,  # A few steps on 24 images per class.
    "loss": _set(selection_metric="loss"),  # The best epoch by validation log loss,
    "auc": _set(selection_metric="auc"),  # ... ROC AUC,
    "f1": _set(selection_metric="f1"),  # ... or F1 at 0.5.
    "blocked": _set(**{"data.split": "blocked"}),  # Validation: contiguous patient-id blocks.
    "random": _set(**{"data.split": "random"}),  # Validation: random patients.
    "s128": _set(**{"data.image_size": 128}),  # Input side in pixels.
    "s160": _set(**{"data.image_size": 160}),
    "s192": _set(**{"data.image_size": 192}),
    "s224": _set(**{"data.image_size": 224}),
    "aug": _set(**_STRONG),  # Strong intensity and crop augmentation.
    # A RandAugment-style policy: 2 of 8 intensity and geometry operations per image, half range.
    "randaug": _set(**{"augment.policy_ops": 2, "augment.policy_magnitude": 0.5}),
    "crop": _set(**{"data.crop_border": 0.08}),  # 8% of each side cut before resizing.
    "ls": _set(label_smoothing=0.1),  # Label smoothing.
    "mixup": _set(mixup_prob=0.5),  # Half the images mixed with another.
    "ema": _set(ema_decay=0.998),  # Validation and the saved model use an EMA of the weights.
    "noweight": _set(class_weight="none"),  # No class weights in the loss.
    "bn99": _set(**{"model.bn_momentum": 0.99}),  # BatchNorm momentum.
    "eq": _set(**{"model.intensity": "equalize"}),  # Per-image histogram equalisation,
    "pct": _set(**{"model.intensity": "percentile"}),  # ... or a 1st-99th percentile window,
    "noeq": _set(**{"model.intensity": "none"}),  # ... or neither.
    "border": _set(**{"augment.border_gain": 1.5}),  # Each side's band darker or brighter.
    "res": _set(**{"augment.resample_prob": 0.3}),  # 30% of images down- then up-sampled.
    "noacq": _set(**_NO_ACQUISITION),  # None of eq, border and res.
    "a1": _set(**_ALPHA1),  # MobileNetV2 alpha 1.0, BatchNorm statistics refit on training images.
    "freeze0": _freeze_first(0),  # MobileNetV2: every layer fine-tuned,
    "freeze3": _freeze_first(3),  # ... the stem and blocks 0-1 frozen,
    "freeze5": _freeze_first(5),  # ... the stem and blocks 0-3 frozen.
    "full": _full,  # Every layer fine-tuned with BatchNorm trained after a 5-epoch head.
    # 25 fine-tuning epochs, cosine to zero, an EMA of the weights, no early stopping.
    "long": _then(_fine_tune("long", num_epochs=25),
                  _set(lr_end_factor=0.0, ema_decay=0.998, early_stopping_patience=25)),
    "last6": _last6,  # The first MobileNetV2 recipe (224 px, last 6 blocks, BatchNorm frozen).
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
