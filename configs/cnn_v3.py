"""The deeper small CNN: 128x128, five double-conv blocks (8..128 channels), BatchNorm, dropout.

  python launch.py --config=configs/cnn_v3.py --workdir=workdirs/cnn_v3
  python launch.py --config=configs/cnn_v3.py:debug   # a few steps on a small subset
"""

from configs import base


def get_config(variant=""):
  config = base.get_config()
  config.name = "cnn_v3"
  config.description = "CNN, 5 double-conv blocks with BatchNorm (128x128)"
  config.data.image_size = 128
  config.model.name = "cnn_v3"
  config.model.block_features = (8, 16, 32, 64, 128)
  config.model.convs_per_block = 2
  config.model.dense_features = 128
  config.model.dropout_rate = 0.4
  config.num_epochs = 10
  return base.apply_variant(config, variant)
