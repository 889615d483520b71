"""MobileNetV2 alpha 1.0 from the APPROXIMATE ImageNet weights in ../shared/weights (dequantised
int8 TFLite, BatchNorm folded): a new head trained on the frozen backbone's features.

  python launch.py --config=configs/mobilenet_alpha1.py --workdir=workdirs/mobilenet_v2_1.0
  python launch.py --config=configs/mobilenet_alpha1.py:debug

Fine-tuning alpha 1.0 takes about an hour per few epochs on 2 CPU cores, so by default
only the head trains; add a phase (see configs/mobilenet.py) on faster hardware.
"""

from configs import base
from configs import mobilenet

def get_config(variant=""):
  config = mobilenet.get_config("pre20")  # Its recipe was not part of issue #20's study.
  config.name = "mobilenet_v2_1.0"
  config.description = ("MobileNetV2 alpha 1.0, approximate ImageNet weights (int8 TFLite, BN "
                        "folded), head on the frozen backbone (224x224)")
  config.model.alpha = 1.0
  config.model.weights = base.ALPHA1_WEIGHTS
  config.data.image_size = 224
  config.selection_metric = "f1"
  # The frozen-backbone head phase only.
  config.phases = [dict(config.phases[0], num_epochs=15)]
  return base.apply_variant(config, variant)
