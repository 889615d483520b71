"""MobileNetV2 (alpha 0.35) from Keras's ImageNet weights: new head on the frozen backbone,
then fine-tuning of the last blocks. The default of `make train`.

  python launch.py --config=configs/mobilenet.py --workdir=workdirs/mobilenet_v2
  python launch.py --config=configs/mobilenet.py:debug   # a few steps on a small subset
  # alpha 1.0 from any Keras-format file of that width (here the approximate one in weights/):
  python launch.py --config=configs/mobilenet.py --config.model.alpha=1.0 \
      --config.model.weights=weights/mobilenet_v2_1.0_224_imagenet_bnfolded_dequant_from_int8_tflite.h5 \
      --workdir=workdirs/mobilenet_v2_1.0

The weights are Keras's own file (`mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224
_no_top.h5`), looked up in weights/, $KERAS_HOME/models and ~/.keras/models; a missing file
is an error, never a silent start from random weights (`--config.model.weights=none` is the
explicit choice to train from scratch).
"""

from configs import base


def get_config(variant=""):
  config = base.get_config()
  config.name = "mobilenet_v2"
  config.description = "MobileNetV2 alpha 0.35, ImageNet weights, fine-tuned (224x224)"
  config.data.image_size = 224
  config.data.channels = 1  # The model repeats gray to the 3 channels ImageNet filters expect.
  config.model.name = "mobilenet_v2"
  config.model.alpha = 0.35
  config.model.weights = "imagenet"
  config.model.weights_size = 224
  config.model.dropout_rate = 0.2
  config.model.bn_momentum = 0.999  # Keras's; "bn99" (0.99) lets running statistics keep up.
  config.batch_size = 32
  # Phase 1 trains only the new head, BatchNorm in inference mode, on backbone features
  # computed once (cached_features; no augmentation); phase 2 fine-tunes the
  # head and the last `trainable` blocks (an int; "all" for the whole network) at a lower
  # rate. A phase starts from the best weights of the phases before it.
  config.phases = [
      dict(name="head", num_epochs=15, learning_rate=1e-3, trainable="head",
           train_batch_norm=False, cached_features=True),
      dict(name="fine_tune", num_epochs=8, learning_rate=2e-4, trainable=6,
           train_batch_norm=False),
  ]
  config.early_stopping_patience = 3
  return base.apply_variant(config, variant)
