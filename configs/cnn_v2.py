"""A stronger CNN: 128x128, four conv blocks with BatchNorm, dropout.

  python launch.py --config=configs/cnn_v2.py --workdir=workdirs/cnn_v2
  python launch.py --config=configs/cnn_v2.py:debug   # a few steps on a small subset
"""

from configs import base


def get_config(variant=""):
  config = base.get_config()
  config.name = "cnn_v2"
  config.description = "CNN, 4 conv blocks with BatchNorm (128x128)"
  config.data.image_size = 128
  config.model.name = "cnn_v2"
  config.model.block_features = (16, 32, 64, 128)
  config.model.convs_per_block = 1
  config.model.dense_features = 128
  config.model.dropout_rate = 0.3
  config.num_epochs = 20
  return base.apply_variant(config, variant)
