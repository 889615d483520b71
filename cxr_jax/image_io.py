"""Decoding of the image files found in the wild into fixed-size uint8 arrays.

Pillow does the decoding because it covers every kind hospitals export
(grayscale/RGB/RGBA/palette JPEG and PNG, CMYK JPEG, 16-bit PNG, TIFF, BMP) and,
unlike a tf.io op inside a graph, lets each bad file fail on its own with a reason.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

# Decompression-bomb protection stays on, but real radiographs can be large.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


class ImageDecodeError(ValueError):
  """A file that is empty, truncated, corrupt or not an image."""


def _to_8bit(img: Image.Image) -> Image.Image:
  """Maps high-bit-depth (16-bit, 32-bit int, float) images to 8-bit "L".

  Windowed to the image's own [min, max]: 16-bit X-ray PNGs often hold 10-12 bit
  data, which a fixed 65535 -> 255 scaling would render nearly black. An image
  that already spans the full range maps exactly as a fixed scaling would.
  """
  arr = np.asarray(img, dtype=np.float64)
  lo, hi = float(arr.min()), float(arr.max())
  if hi <= lo:
    out = np.zeros(arr.shape, np.uint8)
  else:
    out = np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
  return Image.fromarray(out, mode="L")


def decode_image(data: bytes, size: tuple[int, int], channels: int) -> np.ndarray:
  """Decodes image bytes to a (height, width, channels) uint8 array.

  Args:
    data: the file's bytes.
    size: (height, width) to resize to (bilinear, antialiased when shrinking).
    channels: 1 (luma) or 3 (RGB; gray images are replicated).
  Raises:
    ImageDecodeError with the reason for empty, truncated, corrupt or non-image data.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}.")
  if not data:
    raise ImageDecodeError("empty file (0 bytes)")
  try:
    img = Image.open(io.BytesIO(data))
    img.load()  # Forces the full decode so truncation is detected here.
    img = ImageOps.exif_transpose(img)
  except Exception as e:  # Pillow raises many exception types for bad data.
    raise ImageDecodeError(f"{type(e).__name__}: {e}") from None
  if img.width < 1 or img.height < 1:
    raise ImageDecodeError(f"image has no pixels ({img.width}x{img.height})")
  if img.mode in ("I", "F") or img.mode.startswith("I;"):
    img = _to_8bit(img)
  elif img.mode in ("P", "PA"):
    img = img.convert("RGBA")
  # RGBA/LA: alpha is dropped, the stored colour kept (what viewers show on black).
  img = img.convert("L" if channels == 1 else "RGB")
  height, width = size
  if (img.height, img.width) != (height, width):
    img = img.resize((width, height), Image.BILINEAR)
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if channels == 1 else arr


def decode_file(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
  with open(path, "rb") as f:
    data = f.read()
  return decode_image(data, size, channels)
