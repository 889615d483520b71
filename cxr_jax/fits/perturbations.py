"""Acquisition perturbations of X-rays, their severities set from the training split's spread.

Each family moves one acquisition cue of every image to the edge of where the training
split's images have it (its 5th or 95th percentile), so the family is a site that
exposes, collimates or compresses differently but stays within what training shows:

  border_dark, border_bright  the outer band (8% of each side) scaled to training's
                              5th / 95th percentile of border brightness
  gamma_dark, gamma_bright    a gamma curve moving the median to its 5th / 95th percentile
  black_level                 the black level (5th percentile intensity) lifted to its 95th
  low_contrast                the 5-95% intensity range compressed to its 5th percentile
  low_resolution              down- then up-sampling by the first factor (of RESAMPLE_FACTORS)
                              that takes training's median sharpness to its 5th percentile
  jpeg                        re-encoded at JPEG_QUALITY (the originals' quality can't be
                              read from the 224 px copies, so this one is fixed)
  marker                      a bright lead-marker letter in a random corner

Labels are kept, so the families are labelled folders of known accuracy. Nothing here
sees test/. `Severities.fit(train_images)` measures the training spread once.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw

BORDER = 0.08
RESAMPLE_FACTORS = (0.75, 0.5, 0.375, 0.25)
JPEG_QUALITY = 15
FAMILIES = ("border_dark", "border_bright", "gamma_dark", "gamma_bright", "black_level",
            "low_contrast", "low_resolution", "jpeg", "marker")


def gray(images: np.ndarray) -> np.ndarray:
  """[N, H, W] float in [0, 1] of uint8 images [N, H, W, C]."""
  return np.asarray(images, np.float32).mean(axis=-1) / 255.0


def border_mask(h: int, w: int, fraction: float = BORDER) -> np.ndarray:
  bh, bw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
  mask = np.zeros((h, w), bool)
  mask[:bh], mask[-bh:], mask[:, :bw], mask[:, -bw:] = True, True, True, True
  return mask


def sharpness(g: np.ndarray) -> np.ndarray:
  """Mean absolute horizontal gradient of gray images [N, H, W] in [0, 1]."""
  return np.abs(np.diff(g, axis=2)).mean(axis=(1, 2))


def cues(images: np.ndarray) -> dict[str, np.ndarray]:
  """Per-image acquisition cues: border mean, median, black/white level, contrast, sharpness."""
  g = gray(images)
  mask = border_mask(*g.shape[1:])
  p5, p50, p95 = np.quantile(g.reshape(len(g), -1), [0.05, 0.5, 0.95], axis=1)
  return {"border": g[:, mask].mean(axis=1), "median": p50, "black_level": p5,
          "white_level": p95, "contrast": p95 - p5,
          "sharpness": sharpness(g)}


@dataclasses.dataclass(frozen=True)
class Severities:
  """The training split's 5th and 95th percentile of each cue, and the resampling factor
  that brings training's median sharpness down to its 5th percentile."""
  low: dict
  high: dict
  resample_factor: float = RESAMPLE_FACTORS[-1]

  @classmethod
  def fit(cls, train_images: np.ndarray, seed: int = 0) -> "Severities":
    c = cues(train_images)
    low = {k: float(np.quantile(v, 0.05)) for k, v in c.items()}
    sample = train_images[np.random.default_rng(seed).choice(
        len(train_images), min(256, len(train_images)), replace=False)]
    return cls(low, {k: float(np.quantile(v, 0.95)) for k, v in c.items()},
               resample_factor(sample, low["sharpness"]))


def to_uint8(g: np.ndarray, channels: int) -> np.ndarray:
  out = np.clip(np.round(g * 255.0), 0, 255).astype(np.uint8)[..., None]
  return np.repeat(out, channels, axis=-1)


def scale_border(g: np.ndarray, target: float) -> np.ndarray:
  mask = border_mask(*g.shape[1:])
  current = np.maximum(g[:, mask].mean(axis=1), 1e-3)
  out = g.copy()
  out[:, mask] = np.clip(g[:, mask] * (target / current)[:, None], 0.0, 1.0)
  return out


def set_median(g: np.ndarray, target_median: float) -> np.ndarray:
  median = np.clip(np.median(g.reshape(len(g), -1), axis=1), 1e-3, 0.999)
  gamma = np.log(np.clip(target_median, 1e-3, 0.999)) / np.log(median)
  return np.power(np.clip(g, 1e-6, 1.0), gamma[:, None, None])


def set_black_level(g: np.ndarray, target: float) -> np.ndarray:
  p5 = np.quantile(g.reshape(len(g), -1), 0.05, axis=1)
  lift = np.clip((target - p5) / np.maximum(1.0 - p5, 1e-3), 0.0, 1.0)[:, None, None]
  return lift + g * (1.0 - lift)


def set_contrast(g: np.ndarray, target: float) -> np.ndarray:
  flat = g.reshape(len(g), -1)
  p5, p95 = np.quantile(flat, [0.05, 0.95], axis=1)
  centre = flat.mean(axis=1)[:, None, None]
  factor = np.minimum(target / np.maximum(p95 - p5, 1e-3), 1.0)[:, None, None]
  return np.clip(centre + (g - centre) * factor, 0.0, 1.0)


def _resample(images: np.ndarray, factor: float) -> np.ndarray:
  out = np.empty_like(images)
  h, w = images.shape[1:3]
  small = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
  for i, image in enumerate(images):
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    back = np.asarray(img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR))
    out[i] = back.reshape(out[i].shape)
  return out


def resample_factor(images: np.ndarray, target_sharpness: float) -> float:
  """The first factor whose median sharpness on `images` reaches `target_sharpness`."""
  for factor in RESAMPLE_FACTORS:
    if np.median(cues(_resample(images, factor))["sharpness"]) <= target_sharpness:
      return factor
  return RESAMPLE_FACTORS[-1]


def _jpeg(images: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
  out = np.empty_like(images)
  for i, image in enumerate(images):
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    out[i] = np.asarray(Image.open(buffer)).reshape(out[i].shape)
  return out


def _marker(images: np.ndarray, rng) -> np.ndarray:
  out = images.copy()
  h, w = images.shape[1:3]
  side = max(6, int(0.1 * h))
  for i, image in enumerate(images):
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    top = int(rng.integers(0, 2)) * (h - side - 2) + 1
    left = int(rng.integers(0, 2)) * (w - side - 2) + 1
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, left + side, top + side], fill=40 if img.mode == "L" else (40,) * 3)
    draw.text((left + side // 4, top + side // 8), str(rng.choice(["R", "L"])),
              fill=255 if img.mode == "L" else (255,) * 3)
    out[i] = np.asarray(img).reshape(out[i].shape)
  return out


def perturb(images: np.ndarray, family: str, severities: Severities, seed: int = 0
            ) -> np.ndarray:
  """`images` (uint8 [N, H, W, C]) as `family` would acquire them."""
  channels = images.shape[-1]
  g = gray(images)
  simple = {"border_dark": lambda: scale_border(g, severities.low["border"]),
            "border_bright": lambda: scale_border(g, severities.high["border"]),
            "gamma_dark": lambda: set_median(g, severities.low["median"]),
            "gamma_bright": lambda: set_median(g, severities.high["median"]),
            "black_level": lambda: set_black_level(g, severities.high["black_level"]),
            "low_contrast": lambda: set_contrast(g, severities.low["contrast"])}
  if family in simple:
    return to_uint8(simple[family](), channels)
  if family == "low_resolution":
    return _resample(images, severities.resample_factor)
  if family == "jpeg":
    return _jpeg(images)
  if family == "marker":
    return _marker(images, np.random.default_rng(seed))
  raise ValueError(f"Unknown acquisition perturbation {family!r}; choose from {FAMILIES}.")


def make_families(images: np.ndarray, severities: Severities, seed: int = 0
                  ) -> dict[str, np.ndarray]:
  """{family: perturbed images}, every family of FAMILIES, labels unchanged."""
  return {family: perturb(images, family, severities, seed) for family in FAMILIES}
