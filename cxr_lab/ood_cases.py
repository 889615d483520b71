"""Generated out-of-distribution cases, and how well a detector separates them from validation.

Families (each made at the model's input size; nothing here is ever fitted on):
natural photos (a folder, e.g. ../shared/data/imagenet_photos), uniform noise, blank
(black) and constant (one random gray level) images, text rendered on white, and
validation X-rays inverted (negative), rotated 90 degrees, flipped upside down,
cropped to a quarter (one quadrant, enlarged) and heavily blurred; and the far-shift
families of `generated` (chest X-rays unlike this collection's: heavy noise, a strong
zoom, half inverted, another grey-scale curve, letterboxed, squashed, tilted, zoomed in).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from sklearn import metrics as skm

from cxr_jax import data as data_lib
from cxr_jax.fits import generated
from cxr_jax.fits import ood
from cxr_jax.fits import ood_signals

FAMILIES = ("photos", "noise", "blank", "constant", "text", *generated.XRAY_FAMILIES,
            *generated.FAR_FAMILIES)
_WORDS = ("PATIENT NAME DATE OF BIRTH 12/03/2019 REPORT FINDINGS IMPRESSION NO ACUTE "
          "CARDIOPULMONARY PROCESS LUNGS ARE CLEAR HEART SIZE NORMAL").split()






def _text_image(rng, size: int, channels: int) -> np.ndarray:
  img = Image.new("L", (size, size), 255)
  draw = ImageDraw.Draw(img)
  y = int(rng.integers(0, size // 8))
  while y < size:
    words = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))
    draw.text((int(rng.integers(0, size // 6)), y), words, fill=0)
    y += int(rng.integers(9, 16))
  return generated.to_array(img, channels)








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
      **generated.xray_families(picked, rng),
      **generated.far_families(picked, seed),
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


def heldout_rate(combined: ood_signals.Combined, val_features, val_images, splits: int = 20,
                 seed: int = 0) -> dict:
  """Flagged fraction of half of validation at thresholds fitted on the other half: the
  rate on new in-distribution images, which the validation quantile fixes on its own."""
  rng = np.random.default_rng(seed)
  n = len(val_images)
  rates = []
  for _ in range(splits):
    order = rng.permutation(n)
    fitted_on, judged = order[: n // 2], order[n // 2:]
    half = combined.with_thresholds_from(val_features[fitted_on], val_images[fitted_on])
    rates.append(float(np.mean(half.score(val_features[judged], val_images[judged])
                               > half.threshold)))
  return {"mean": float(np.mean(rates)), "max": float(np.max(rates)), "splits": splits}


def _rows(detector, val_features, val_images, sets: dict) -> dict:
  val_scores = detector.score(val_features, val_images)
  return {"threshold": detector.threshold,
          "validation_flagged": float(np.mean(val_scores > detector.threshold)),
          **{name: separation(val_scores, detector.score(f, x), detector.threshold)
             for name, (f, x) in sets.items()}}


def measure(predictor, train, val, cases: dict[str, np.ndarray], kinds=("mahalanobis", "knn"),
            accept: float = ood.DEFAULT_ACCEPT, extra_sets: dict | None = None) -> dict:
  """{detector: {"threshold", "validation_flagged", family or set: separation}}: each
  features detector alone, the thumbnail alone, and each combined with the thumbnail
  ("<kind>+thumbnail", what `fit` uses), with the combined one's held-out validation rate."""
  train_features = predictor.predict(train.images).features
  val_features = predictor.predict(val.images).features
  sets = {name: (predictor.predict(images).features, images) for name, images in cases.items()}
  sets.update({name: (predictor.predict(d.images).features, d.images)
               for name, d in (extra_sets or {}).items()})
  thumbnail = ood_signals.fit_thumbnail(train.images)
  out = {}
  for kind in kinds:
    detector = (predictor.own_detector(train_features) if kind == "pca_reconstruction"
                else ood.fit(kind, train_features, train.labels, predictor.feature_layout))
    combined = ood_signals.Combined({"features": detector, "thumbnail": thumbnail})
    combined.set_threshold(val_features, val_images=val.images, accept=accept)
    for name, single in (("features", detector), ("thumbnail", thumbnail)):
      alone = ood_signals.Combined({name: single})
      alone.set_threshold(val_features, val.images, accept)
      out.setdefault(kind if name == "features" else name,
                     _rows(alone, val_features, val.images, sets))
    out[f"{kind}+thumbnail"] = {**_rows(combined, val_features, val.images, sets),
                                "validation_heldout": heldout_rate(combined, val_features,
                                                                   val.images)}
  return out
