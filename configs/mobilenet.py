"""MobileNetV2 (alpha 0.35) from Keras's ImageNet weights, fine-tuned above its first blocks:
the default of `make train`.

  python launch.py --config=configs/mobilenet.py --workdir=workdirs/mobilenet_v2
  python launch.py --config=configs/mobilenet.py:debug   # a few steps on a small subset
  python launch.py --config=configs/mobilenet.py:v1      # the earlier recipe (see below)
  python launch.py --config=configs/mobilenet.py:unfrozen  # every layer fine-tuned (until #24)
  python launch.py --config=configs/mobilenet.py:pre20   # no equalisation (until #20)
  # alpha 1.0 from any Keras-format file of that width (here the approximate one in weights/):
  python launch.py --config=configs/mobilenet.py --config.model.alpha=1.0 \
      --config.model.weights=weights/mobilenet_v2_1.0_224_imagenet_bnfolded_dequant_from_int8_tflite.h5 \
      --workdir=workdirs/mobilenet_v2_1.0

The recipe was chosen by the rule in README.md ("How the default recipe was chosen"):
lowest mean validation log loss over 3 seeds among the recipes that train within the
make-train budget. It is the study's `full+loss+bn99+s160`: 160x160 input, 5 epochs of
a new head on the frozen backbone's cached features, then up to 12 epochs of every
layer with BatchNorm trained (momentum 0.99: Keras's 0.999 leaves the running statistics
behind the weights), the best epoch and early stopping by validation loss. `:v1` is the
recipe before the study (224 px, last 6 blocks with BatchNorm frozen, selection by
validation F1).

Since issue #24 the stem and blocks 0-3 keep their ImageNet weights in the fine-tune phase
(`trainable=14`, the study's `:freeze5`): chosen by the rule written before its runs
(docs/results.md, "Freezing the first layers"): both frozen candidates were within the
seed spread of the old default's validation log loss and within one standard deviation
of the best stress-validation log loss, and this one is the fastest (its step 2.7x the
old one's on a 2-core Zen 4, `benchmarks/speed_recipe/`). `:unfrozen` is the recipe before.

Since issue #20 each image is histogram-equalised inside the model (so evaluation, export
and the page do the same), and training darkens or brightens a band along each side and
down- then up-samples 30% of the images: the study's `:eq+border+res`, the lowest mean
stress-validation log loss over 3 seeds by the rule written before its runs
(docs/results.md, "The invariance levers of issue #20"). `:pre20` is the recipe before;
`:v1` and `:unfrozen` are without these levers too, as they were.

The weights are Keras's own file (`mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224
_no_top.h5`), looked up in weights/, $KERAS_HOME/models and ~/.keras/models; a missing file
is an error, never a silent start from random weights (`--config.model.weights=none` is the
explicit choice to train from scratch).
"""

from configs import base


def get_config(variant=""):
  config = base.get_config()
  config.name = "mobilenet_v2"
  config.description = ("MobileNetV2 alpha 0.35, ImageNet weights, fine-tuned above block 3 "
                        "with BatchNorm trained (160x160), equalised")
  config.data.image_size = 160
  config.data.channels = 1  # The model repeats gray to the 3 channels ImageNet filters expect.
  config.model.name = "mobilenet_v2"
  config.model.alpha = 0.35
  # Per-image histogram equalisation inside the model (models/intensity.py), and border-band
  # and down-up-sampling augmentation: issue #20's :eq+border+res, chosen by stress
  # validation (docs/results.md). `:pre20` is the recipe before.
  config.model.intensity = "equalize"
  config.augment.border_gain = 1.5
  config.augment.resample_prob = 0.3
  config.model.weights = "imagenet"
  config.model.weights_size = 224
  config.model.dropout_rate = 0.2
  config.model.bn_momentum = 0.99  # Keras's 0.999 lags the weights once BatchNorm trains.
  # Measure BatchNorm statistics on training images before training (models/batch_norm.py):
  # for weight files whose BatchNorm is folded into the convolutions (`:a1`).
  config.model.refit_batch_norm = False
  config.batch_size = 32
  # Phase 1 trains only the new head, BatchNorm in inference mode, on backbone features
  # computed once (cached_features; no augmentation); phase 2 fine-tunes the head and the
  # last 14 parameter groups ("all" would train every layer) at a lower rate. A phase
  # starts from the best weights of the phases before it.
  config.phases = [
      dict(name="head", num_epochs=5, learning_rate=1e-3, trainable="head",
           train_batch_norm=False, cached_features=True),
      # The last 14 of MobileNetV2's 19 parameter groups: the stem and blocks 0-3 (every
      # layer at a quarter of the input side or more) stay frozen.
      dict(name="fine_tune", num_epochs=12, learning_rate=3e-4, trainable=14,
           train_batch_norm=True),
  ]
  config.selection_metric = "loss"
  config.early_stopping_patience = 3
  tokens = [t for t in variant.split("+") if t]
  if "pre20" in tokens or "v1" in tokens or "unfrozen" in tokens:  # Recipes before issue #20.
    _before_issue20(config, named="pre20" in tokens)
    tokens = [t for t in tokens if t != "pre20"]
  if "v1" in tokens:
    _v1(config)
    tokens.remove("v1")
  if "unfrozen" in tokens:
    config.name = "mobilenet_v2-unfrozen"
    config.description = config.description.replace("above block 3", "whole")
    config.phases = [config.phases[0], dict(config.phases[1], trainable="all")]
    tokens.remove("unfrozen")
  return base.apply_variant(config, "+".join(tokens))


def _before_issue20(config, named: bool):
  """No standardisation, border or resolution augmentation: the default until issue #20."""
  config.model.intensity = "none"
  config.augment.border_gain = 1.0
  config.augment.resample_prob = 0.0
  if named:
    config.name = "mobilenet_v2-pre20"
    config.description = config.description.replace(", equalised", "")


def _v1(config):
  """The recipe before the study: 224 px, last 6 blocks, BatchNorm frozen, F1 selection."""
  config.name = "mobilenet_v2-v1"
  config.description = "MobileNetV2 alpha 0.35, ImageNet weights, last 6 blocks fine-tuned (224x224)"
  config.data.image_size = 224
  config.model.bn_momentum = 0.999
  config.phases = [
      dict(name="head", num_epochs=15, learning_rate=1e-3, trainable="head",
           train_batch_norm=False, cached_features=True),
      dict(name="fine_tune", num_epochs=8, learning_rate=2e-4, trainable=6,
           train_batch_norm=False),
  ]
  config.selection_metric = "f1"
