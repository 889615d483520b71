"""MobileNetV2 alpha 1.0 from the APPROXIMATE ImageNet weights in ../shared/weights (dequantised
int8 TFLite, BatchNorm folded), a new head on the frozen backbone's features.

  python launch.py --config=configs/mobilenet_alpha1.py --workdir=workdirs/mobilenet_v2_1.0
  python launch.py --config=configs/mobilenet_alpha1.py:debug

Fine-tuning alpha 1.0 costs about 7x the default's step on 2 CPU cores, so here only the
head trains (15 epochs, the best by validation F1, at 224 px, without the default's
acquisition levers). `configs/mobilenet.py:a1` is the default recipe at alpha 1.0,
fine-tuned, with its BatchNorm statistics measured on training images first.
"""

from configs import base
from configs import mobilenet


def get_config(variant=""):
  config = mobilenet.get_config("noacq")
  config.name = "mobilenet_v2_1.0"
  config.description = ("MobileNetV2 alpha 1.0, approximate ImageNet weights (int8 TFLite, BN "
                        "folded), head on the frozen backbone (224x224)")
  config.model.alpha = 1.0
  config.model.weights = base.ALPHA1_WEIGHTS
  config.data.image_size = 224
  config.selection_metric = "f1"
  config.phases = [dict(config.phases[0], num_epochs=15)]  # The frozen-backbone head only.
  return base.apply_variant(config, variant)
