"""Far-shift families: chest X-rays made unlike this collection's, from labelled X-rays.

The acquisition perturbations (`perturbations`) stay within the training split's spread;
the x-ray OOD families of `ood_cases` change orientation, polarity, crop or sharpness.
These are the other ways a chest X-ray from elsewhere differs, each made generically
(fixed strengths, nothing tuned to a detector), image i of a family made from image i of
the input, labels kept, so each family is also a labelled folder:

  heavy_noise     additive Gaussian noise of 1/4 of the grey range (a low-dose detector)
  zoom_quadrant   a quarter-side window inside one quadrant, enlarged 4x (a strong zoom)
  half_inverted   one half (left, right, top or bottom) in negative
  contrast_curve  another grey-scale curve: gamma 1/3 or 3, or a steep S-curve around
                  the image's median (another site's look-up table)
  letterbox       the image at 100% x 60% in a black square canvas (a pipeline that
                  keeps the aspect ratio and pads)
  squashed        the central half of the width stretched to the full width (a portrait
                  file squashed to a square)
  tilted          rotated by 15-25 degrees either way, corners black
  zoom_centre     the central 55% of each side enlarged (a tight, adult-like collimation)

Nothing here sees test/ or is fitted on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FAMILIES = ("heavy_noise", "zoom_quadrant", "half_inverted", "contrast_curve", "letterbox",
            "squashed", "tilted", "zoom_centre")
NOISE_STD = 0.25  # Of the grey range.
GAMMAS = (1 / 3, 3.0)
S_CURVE_SLOPE = 12.0  # Of a logistic on [0, 1] intensities.
LETTERBOX_HEIGHT = 0.6
SQUASH_WIDTH = 0.5
TILT_DEGREES = (15, 25)
CENTRE_ZOOM = 0.55


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(img: Image.Image, channels: int) -> np.ndarray:
  arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.uint8)
  return arr[..., None] if channels == 1 else arr


def _crop_resize(image: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
  size = (image.shape[1], image.shape[0])
  crop = _pil(image[top:top + h, left:left + w])
  return _array(crop.resize(size, Image.BILINEAR), image.shape[-1])


def heavy_noise(image: np.ndarray, rng) -> np.ndarray:
  noisy = image + rng.normal(0.0, NOISE_STD * 255.0, image.shape)
  return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def zoom_quadrant(image: np.ndarray, rng) -> np.ndarray:
  h, w = image.shape[:2]
  qh, qw = h // 2, w // 2
  top = int(rng.integers(0, 2)) * qh + int(rng.integers(0, qh - qh // 2 + 1))
  left = int(rng.integers(0, 2)) * qw + int(rng.integers(0, qw - qw // 2 + 1))
  return _crop_resize(image, top, left, qh // 2, qw // 2)


def half_inverted(image: np.ndarray, rng) -> np.ndarray:
  out = image.copy()
  h, w = image.shape[:2]
  side = int(rng.integers(0, 4))
  window = [np.s_[:, : w // 2], np.s_[:, w // 2:], np.s_[: h // 2], np.s_[h // 2:]][side]
  out[window] = 255 - out[window]
  return out


def contrast_curve(image: np.ndarray, rng) -> np.ndarray:
  x = image.astype(np.float64) / 255.0
  choice = int(rng.integers(0, 3))
  if choice < 2:
    y = np.power(x, GAMMAS[choice])
  else:
    def s_curve(v):
      return 1.0 / (1.0 + np.exp(-S_CURVE_SLOPE * (v - np.median(x))))
    y = (s_curve(x) - s_curve(0.0)) / max(s_curve(1.0) - s_curve(0.0), 1e-6)
  return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


def letterbox(image: np.ndarray, rng) -> np.ndarray:
  del rng
  h, w = image.shape[:2]
  inner = max(1, int(round(h * LETTERBOX_HEIGHT)))
  small = _array(_pil(image).resize((w, inner), Image.BILINEAR), image.shape[-1])
  out = np.zeros_like(image)
  out[(h - inner) // 2:(h - inner) // 2 + inner] = small
  return out


def squashed(image: np.ndarray, rng) -> np.ndarray:
  del rng
  h, w = image.shape[:2]
  inner = max(1, int(round(w * SQUASH_WIDTH)))
  return _crop_resize(image, 0, (w - inner) // 2, h, inner)


def tilted(image: np.ndarray, rng) -> np.ndarray:
  angle = float(rng.uniform(*TILT_DEGREES)) * (1 if rng.integers(0, 2) else -1)
  return _array(_pil(image).rotate(angle, Image.BILINEAR, fillcolor=0), image.shape[-1])


def zoom_centre(image: np.ndarray, rng) -> np.ndarray:
  del rng
  h, w = image.shape[:2]
  ch, cw = int(round(h * CENTRE_ZOOM)), int(round(w * CENTRE_ZOOM))
  return _crop_resize(image, (h - ch) // 2, (w - cw) // 2, ch, cw)


_MAKERS = {"heavy_noise": heavy_noise, "zoom_quadrant": zoom_quadrant,
           "half_inverted": half_inverted, "contrast_curve": contrast_curve,
           "letterbox": letterbox, "squashed": squashed, "tilted": tilted,
           "zoom_centre": zoom_centre}


def make_families(xrays: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
  """{family: uint8 [N, H, W, C]}, image i of each made from xrays[i] (labels kept)."""
  rng = np.random.default_rng(seed)
  return {name: np.stack([make(x, rng) for x in xrays]) for name, make in _MAKERS.items()}
