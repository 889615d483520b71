"""Labelled folders generated from labelled chest X-rays, for fitting and judging the
folder-level answers: the folder accuracy interval's margin (`site_calibration`), and the
shift, OOD, audit and adaptation studies of the lab.

Image i of a family is made from image i of the input and keeps its label, so every
family is also a labelled folder. Each is made generically (fixed strengths, nothing tuned
to a detector). Nothing here sees test/ or is fitted on.

X-ray OOD families (orientation, polarity, crop, sharpness): inverted, rotated_90,
upside_down, quarter_crop (one quadrant enlarged 2x), blurred.

Far-shift families (the other ways a chest X-ray from elsewhere differs):

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

Class mixes (label shift): half NORMAL, and nine in ten PNEUMONIA. The acquisition
perturbations, within the training split's spread, are `perturbations`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from cxr_jax.fits import perturbations

XRAY_FAMILIES = ("inverted", "rotated_90", "upside_down", "quarter_crop", "blurred")
FAR_FAMILIES = ("heavy_noise", "zoom_quadrant", "half_inverted", "contrast_curve", "letterbox",
                "squashed", "tilted", "zoom_centre")
NOISE_STD = 0.25  # Of the grey range.
GAMMAS = (1 / 3, 3.0)
S_CURVE_SLOPE = 12.0  # Of a logistic on [0, 1] intensities.
LETTERBOX_HEIGHT = 0.6
SQUASH_WIDTH = 0.5
TILT_DEGREES = (15, 25)
CENTRE_ZOOM = 0.55


def to_pil(image: np.ndarray) -> Image.Image:
  """A (H, W, 1 or 3) uint8 array as a PIL image."""
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def to_array(img: Image.Image, channels: int) -> np.ndarray:
  """A PIL image as a (H, W, channels) uint8 array."""
  arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.uint8)
  return arr[..., None] if channels == 1 else arr


def _crop_resize(image: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
  size = (image.shape[1], image.shape[0])
  crop = to_pil(image[top:top + h, left:left + w])
  return to_array(crop.resize(size, Image.BILINEAR), image.shape[-1])


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
  small = to_array(to_pil(image).resize((w, inner), Image.BILINEAR), image.shape[-1])
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
  return to_array(to_pil(image).rotate(angle, Image.BILINEAR, fillcolor=0), image.shape[-1])


def zoom_centre(image: np.ndarray, rng) -> np.ndarray:
  del rng
  h, w = image.shape[:2]
  ch, cw = int(round(h * CENTRE_ZOOM)), int(round(w * CENTRE_ZOOM))
  return _crop_resize(image, (h - ch) // 2, (w - cw) // 2, ch, cw)


_MAKERS = {"heavy_noise": heavy_noise, "zoom_quadrant": zoom_quadrant,
           "half_inverted": half_inverted, "contrast_curve": contrast_curve,
           "letterbox": letterbox, "squashed": squashed, "tilted": tilted,
           "zoom_centre": zoom_centre}


def far_families(xrays: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
  """{far family: uint8 [N, H, W, C]}, image i of each made from xrays[i]."""
  rng = np.random.default_rng(seed)
  return {name: np.stack([make(x, rng) for x in xrays]) for name, make in _MAKERS.items()}


def _quarter(image: np.ndarray, rng) -> np.ndarray:
  h, w = image.shape[:2]
  return _crop_resize(image, int(rng.integers(0, 2)) * h // 2, int(rng.integers(0, 2)) * w // 2,
                      h // 2, w // 2)


def _blurred(image: np.ndarray) -> np.ndarray:
  radius = image.shape[0] / 16  # 10 px at 160 px: anatomy gone, the gray layout kept.
  return to_array(to_pil(image).filter(ImageFilter.GaussianBlur(radius)), image.shape[-1])


def xray_families(xrays: np.ndarray, rng) -> dict[str, np.ndarray]:
  """{x-ray OOD family: uint8 [N, H, W, C]}, image i of each made from xrays[i]."""
  return {"inverted": 255 - xrays,
          "rotated_90": np.rot90(xrays, k=1, axes=(1, 2)).copy(),
          "upside_down": xrays[:, ::-1].copy(),
          "quarter_crop": np.stack([_quarter(x, rng) for x in xrays]),
          "blurred": np.stack([_blurred(x) for x in xrays])}


def class_mixes(labels: np.ndarray, rng) -> dict[str, np.ndarray]:
  """Indices of label-shifted folders: half NORMAL, and nine in ten PNEUMONIA."""
  normal, pneumonia = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
  n_pneu_90 = min(len(pneumonia), 9 * len(normal))
  return {"mix_half_normal": np.r_[normal, rng.choice(pneumonia, len(normal), replace=False)],
          "mix_90_pneumonia": np.r_[pneumonia[:n_pneu_90],
                                    rng.choice(normal, max(1, n_pneu_90 // 9), replace=False)]}


def labelled_folders(images: np.ndarray, labels: np.ndarray, severities, seed: int = 0,
                     far: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{name: (images, labels)}: the perturbations, the x-ray OOD families ("ood_<name>") and
  the class mixes of labelled images; far: with the far-shift families ("far_<name>")."""
  rng = np.random.default_rng(seed)
  folders = {name: (x, labels) for name, x in
             perturbations.make_families(images, severities, seed).items()}
  folders.update({f"ood_{name}": (x, labels) for name, x in xray_families(images, rng).items()})
  folders.update({name: (images[i], labels[i]) for name, i in class_mixes(labels, rng).items()})
  if far:
    folders.update({f"far_{name}": (x, labels) for name, x in far_families(images, seed).items()})
  return folders
