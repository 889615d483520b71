"""Generated out-of-distribution cases, and how well a detector separates them from validation.

Families (each made at the model's input size; nothing here is ever fitted on):
natural photos (a folder, e.g. ../shared/data/imagenet_photos), uniform noise, blank
(black) and constant (one random gray level) images, text rendered on white, and
validation X-rays inverted (negative), rotated 90 degrees, flipped upside down,
cropped to a quarter (one quadrant, enlarged) and heavily blurred.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from sklearn import metrics as skm

from cxr_jax import data as data_lib
from cxr_jax.fits import ood

FAMILIES = ("photos", "noise", "blank", "constant", "text", "inverted", "rotated_90",
            "upside_down", "quarter_crop", "blurred")
XRAY_FAMILIES = ("inverted", "rotated_90", "upside_down", "quarter_crop", "blurred")
_WORDS = ("PATIENT NAME DATE OF BIRTH 12/03/2019 REPORT FINDINGS IMPRESSION NO ACUTE "
          "CARDIOPULMONARY PROCESS LUNGS ARE CLEAR HEART SIZE NORMAL").split()


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(img: Image.Image, channels: int) -> np.ndarray:
  arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.uint8)
  return arr[..., None] if channels == 1 else arr


def _text_image(rng, size: int, channels: int) -> np.ndarray:
  img = Image.new("L", (size, size), 255)
  draw = ImageDraw.Draw(img)
  y = int(rng.integers(0, size // 8))
  while y < size:
    words = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))
    draw.text((int(rng.integers(0, size // 6)), y), words, fill=0)
    y += int(rng.integers(9, 16))
  return _array(img, channels)


def _quarter(image: np.ndarray, rng) -> np.ndarray:
  h, w = image.shape[:2]
  top, left = int(rng.integers(0, 2)) * h // 2, int(rng.integers(0, 2)) * w // 2
  crop = _pil(image[top:top + h // 2, left:left + w // 2])
  return _array(crop.resize((w, h), Image.BILINEAR), image.shape[-1])


def _blurred(image: np.ndarray) -> np.ndarray:
  radius = image.shape[0] / 16  # 10 px at 160 px: anatomy gone, the gray layout kept.
  return _array(_pil(image).filter(ImageFilter.GaussianBlur(radius)), image.shape[-1])


def xray_cases(xrays: np.ndarray, rng) -> dict[str, np.ndarray]:
  """The XRAY_FAMILIES of `xrays`, image i of each family made from xrays[i] (labels kept)."""
  return {"inverted": 255 - xrays,
          "rotated_90": np.rot90(xrays, k=1, axes=(1, 2)).copy(),
          "upside_down": xrays[:, ::-1].copy(),
          "quarter_crop": np.stack([_quarter(x, rng) for x in xrays]),
          "blurred": np.stack([_blurred(x) for x in xrays])}


def make_cases(xrays: np.ndarray, n: int = 64, photos_dir: str | None = None,
               prep: data_lib.Preprocess | None = None, seed: int = 0) -> dict[str, np.ndarray]:
  """{family: uint8 images [m, H, W, C]} at the shape of `xrays` (validation images)."""
  rng = np.random.default_rng(seed)
  size, channels = xrays.shape[1], xrays.shape[-1]
  shape = (n, size, size, channels)
  picked = xrays[rng.choice(len(xrays), size=min(n, len(xrays)), replace=False)]
  cases = {
      "noise": rng.integers(0, 256, shape, dtype=np.uint8),
      "blank": np.zeros(shape, np.uint8),
      "constant": np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 1), dtype=np.uint8),
                                  shape).copy(),
      "text": np.stack([_text_image(rng, size, channels) for _ in range(n)]),
      **xray_cases(picked, rng),
  }
  if photos_dir is not None:
    photos = data_lib.load_files([photos_dir], prep or data_lib.Preprocess(size, channels))
    if len(photos):
      cases = {"photos": photos.images, **cases}
  return cases


def separation(val_scores, family_scores, threshold: float) -> dict:
  """Fraction of a family flagged at the threshold, and AUROC validation (in) vs family (out)."""
  val_scores, family_scores = np.asarray(val_scores), np.asarray(family_scores)
  labels = np.r_[np.zeros(len(val_scores)), np.ones(len(family_scores))]
  return {"n": int(len(family_scores)),
          "flagged": float(np.mean(family_scores > threshold)),
          "auroc": float(skm.roc_auc_score(labels, np.r_[val_scores, family_scores]))}


def measure(predictor, train, val, cases: dict[str, np.ndarray], kinds=("mahalanobis", "knn"),
            accept: float = ood.DEFAULT_ACCEPT, extra_sets: dict | None = None) -> dict:
  """{kind: {"threshold", "validation_flagged", family or set: separation}} per detector."""
  train_features = predictor.predict(train.images).features
  val_features = predictor.predict(val.images).features
  features = {name: predictor.predict(images).features for name, images in cases.items()}
  features.update({name: predictor.predict(d.images).features
                   for name, d in (extra_sets or {}).items()})
  out = {}
  for kind in kinds:
    detector = (predictor.own_detector(train_features) if kind == "pca_reconstruction"
                else ood.fit(kind, train_features, train.labels, predictor.feature_layout))
    val_scores = detector.score(val_features)
    detector.set_threshold(val_scores, accept)
    out[kind] = {"threshold": detector.threshold,
                 "validation_flagged": float(np.mean(val_scores > detector.threshold)),
                 **{name: separation(val_scores, detector.score(f), detector.threshold)
                    for name, f in features.items()}}
  return out
