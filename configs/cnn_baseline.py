"""The seed's baseline CNN: 64x64 grayscale, two conv and two dense hidden layers.

  python launch.py --config=configs/cnn_baseline.py --workdir=workdirs/cnn_baseline
  python launch.py --config=configs/cnn_baseline.py:debug   # a few steps on a small subset
"""

from configs import base


def get_config(variant=""):
  config = base.get_config()
  config.name = "cnn_baseline"
  config.description = "baseline CNN, 2 conv + 2 dense (64x64)"
  config.data.image_size = 64
  config.model.name = "cnn_baseline"
  config.model.conv_features = (32, 64)
  config.model.dense_features = (128, 64)
  config.num_epochs = 20
  config.learning_rate = 1e-3
  return base.apply_variant(config, variant)
