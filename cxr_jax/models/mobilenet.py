"""MobileNetV2 (Keras's ImageNet weights, `mobilenet_v2`) with a new PNEUMONIA head."""

from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cxr_jax.models import intensity as intensity_lib
from cxr_jax.models import keras_weights
from cxr_jax.models import mobilenet_v2


class MobileNetV2Classifier(nn.Module):
  """MobileNetV2 backbone (Keras layer names, ImageNet weights) + a new PNEUMONIA head.

  X-rays arrive as [B,H,W,1] in [0, 1]; they are mapped to Keras's
  `preprocess_input` range [-1, 1]; the gray channel stands for the three equal
  channels the ImageNet filters expect (an RGB input is used as it is).
  `train_batch_norm=False` keeps BatchNorm in inference mode while dropout trains:
  the usual transfer-learning setting (Keras's `base_model(x, training=False)`).
  """
  alpha: float = 0.35
  dropout_rate: float = 0.2
  ops: str = "auto"  # cxr_jax.ops policy of every backbone layer.
  bn_momentum: float = mobilenet_v2.BN_MOMENTUM
  weights: str = "imagenet"  # "imagenet" (Keras's file, found by name), a .h5 path, or "none".
  weights_size: int = 224  # Which Keras file (they exist for 96..224) when searched by name.
  dtype: Any = jnp.float32  # Backbone compute dtype (bfloat16 on accelerators); params stay fp32.
  intensity: str = "none"  # Per-image standardisation first (models/intensity.py KINDS).
  gradcam_layer = "backbone/Conv_1_bn"  # The last 7x7 feature map, before ReLU6.

  def setup(self):
    # Pretrained backbones are overwritten whole (strictly) by load_pretrained, so their
    # initialiser can be the one that compiles fastest.
    kernel_init = (nn.initializers.glorot_uniform() if self.weights == "none"
                   else nn.initializers.zeros)
    self.backbone = mobilenet_v2.MobileNetV2(alpha=self.alpha, include_top=False,
                                             pooling=None, ops=self.ops,
                                             bn_momentum=self.bn_momentum,
                                             kernel_init=kernel_init, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.head = nn.Dense(1)

  def feature_map(self, x, train_batch_norm: bool = False):
    """The backbone's last feature map [B, h, w, C] of [0, 1] images."""
    # A gray [B,H,W,1] image goes in as it is: the backbone's stem treats one channel
    # as the same image in all three (cheaper than repeating it).
    x = intensity_lib.standardize(x, self.intensity)
    return self.backbone(x * 2.0 - 1.0, train=train_batch_norm)

  def features(self, x, train_batch_norm: bool = False):
    """Pooled backbone features [B, C] of [0, 1] images (Keras's pooling='avg')."""
    return jnp.mean(self.feature_map(x, train_batch_norm), axis=(1, 2))

  def classify(self, features, train: bool = False):
    """The head alone: logits [B] from pooled features (cached-feature training)."""
    features = jnp.asarray(features, jnp.float32)  # The head and the loss stay in fp32.
    return jnp.squeeze(self.head(self.dropout(features, deterministic=not train)), axis=-1)

  def __call__(self, x, train: bool = False, train_batch_norm: bool | None = None):
    bn_train = train if train_batch_norm is None else train_batch_norm
    fmap = self.feature_map(x, bn_train)
    self.sow("intermediates", "feature_map", fmap)
    return self.classify(jnp.mean(fmap, axis=(1, 2)), train)

  def fine_tune_prefixes(self, n_blocks: int) -> list[str]:
    """Top-level parameter names trained when fine-tuning the last n_blocks (and the head)."""
    return ["head"] + mobilenet_v2.last_blocks_layer_names(n_blocks)

  def load_pretrained(self, model_config, variables: dict) -> dict:
    """ImageNet weights from a Keras .h5 file into the backbone; strict, head left new."""
    if self.weights == "none":
      logging.warning("MobileNetV2 starts from random weights (config.model.weights='none').")
      return variables
    if self.weights != "imagenet":
      path = keras_weights.find_keras_weights(self.alpha, self.weights_size, path=self.weights)
    else:
      try:
        path = keras_weights.find_keras_weights(self.alpha, self.weights_size, include_top=False)
      except FileNotFoundError as no_top_missing:
        try:  # Keras's with-top file holds the same backbone.
          path = keras_weights.find_keras_weights(self.alpha, self.weights_size, include_top=True)
        except FileNotFoundError:
          raise no_top_missing from None
    logging.info("Loading ImageNet weights into the MobileNetV2 backbone from %s", path)
    # A with-top file also fits: its 1000-class top is not used by this model.
    return keras_weights.port_mobilenet_v2(path, variables, exclude=("predictions",),
                                           scope="backbone")
