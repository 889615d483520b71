"""Decoding of the image files found in the wild into fixed-size uint8 arrays.

The one decoding path of every command (training, evaluate, predict, report, the
TFDS build): `open_file` reads DICOM through `data.dicom` and everything else
through Pillow, which covers every kind hospitals export (grayscale/RGB/RGBA/palette
JPEG and PNG, CMYK JPEG, 16-bit PNG, TIFF, BMP) and lets each bad file fail on its
own with a reason; `convert_and_resize` then makes the model input.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageOps

from cxr_jax.data import dicom
from cxr_jax.data.files import MAX_FILE_BYTES, ImageDecodeError, read_bytes  # noqa: F401

# Decompression-bomb protection stays on, but real radiographs can be large. One limit
# for every format: DICOM checks its header against the same number.
Image.MAX_IMAGE_PIXELS = dicom.MAX_IMAGE_PIXELS
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


def open_image(data: bytes) -> Image.Image:
  """Decodes image bytes to an upright, 8-bit Pillow image in the file's own colour mode.

  This is every step of `decode_image` before the conversion to (size, channels):
  the mode is the file's ("1", "L", "LA", "RGB", "RGBA", "CMYK", ...), except that
  high-bit-depth images come out as "L" and palette images as "RGBA".
  Raises:
    ImageDecodeError with the reason for empty, truncated, corrupt or non-image data.
  """
  if not data:
    raise ImageDecodeError("empty file (0 bytes)")
  try:
    img = Image.open(io.BytesIO(data))
    # Pillow itself refuses only above twice its limit (and warns below that); the
    # header's size is checked here, before the pixels are allocated.
    if img.width * img.height > Image.MAX_IMAGE_PIXELS:
      raise ImageDecodeError(f"image is {img.width}x{img.height}, more than the limit of "
                             f"{Image.MAX_IMAGE_PIXELS} pixels (decompression-bomb protection)")
    img.load()  # Forces the full decode so truncation is detected here.
    img = ImageOps.exif_transpose(img)
  except ImageDecodeError:
    raise
  except Exception as e:  # Pillow raises many exception types for bad data.
    raise ImageDecodeError(f"{type(e).__name__}: {e}") from None
  if img.width < 1 or img.height < 1:
    raise ImageDecodeError(f"image has no pixels ({img.width}x{img.height})")
  if img.mode in ("I", "F") or img.mode.startswith("I;"):
    img = _to_8bit(img)
  elif img.mode in ("P", "PA"):
    img = img.convert("RGBA")
  return img


def convert_and_resize(img: Image.Image, size: tuple[int, int], channels: int,
                       crop_border: float = 0.0, resample: int = Image.BILINEAR) -> np.ndarray:
  """The last step of `decode_image`: an `open_image` result to (height, width, channels) uint8.

  crop_border: the fraction of each side cut away first (where markers and text sit).
  resample: the Pillow filter; every command uses bilinear (antialiased when shrinking).
  """
  # RGBA/LA: alpha is dropped, the stored colour kept (what viewers show on black).
  img = img.convert("L" if channels == 1 else "RGB")
  if crop_border > 0:
    dx, dy = round(img.width * crop_border), round(img.height * crop_border)
    img = img.crop((dx, dy, max(dx + 1, img.width - dx), max(dy + 1, img.height - dy)))
  height, width = size
  if (img.height, img.width) != (height, width):
    img = img.resize((width, height), resample)
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if channels == 1 else arr


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
  return convert_and_resize(open_image(data), size, channels)


# Modes whose conversions to "L" and "RGB" give the same pixels from `native_array`'s
# output as from the image itself (Pillow converts them to L through their RGB
# values, ignoring alpha). Others (e.g. "YCbCr", whose L is its Y plane) are
# compared pixel by pixel in `native_matches`.
_NATIVE_EXACT_MODES = ("1", "L", "LA", "RGB", "RGBA", "RGBX", "CMYK")


def native_array(img: Image.Image) -> np.ndarray:
  """An `open_image` result at its own size: (H, W, 1) if its content is gray, else (H, W, 3).

  For storing decoded images losslessly (the TFDS builder): `decode_image` of the
  stored array, for either channel count, equals `decode_image` of the original
  file. RGB images whose three channels are equal everywhere (gray X-rays saved as
  RGB JPEGs) come out as 1 channel: Pillow's integer luma weights sum to exactly
  1, so RGB->L of equal channels returns the value and L->RGB restores them.
  """
  if img.mode in ("1", "L", "LA"):
    return np.asarray(img.convert("L"), dtype=np.uint8)[..., None]
  rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
  if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
    return rgb[..., :1].copy()
  return rgb


def native_matches(img: Image.Image, native: np.ndarray) -> bool:
  """Whether `native_array(img)` converts to the same L and RGB pixels as `img` does."""
  if img.mode in _NATIVE_EXACT_MODES:
    return True
  stored = Image.fromarray(native[..., 0] if native.shape[-1] == 1 else native)
  return all(np.array_equal(np.asarray(img.convert(m)), np.asarray(stored.convert(m)))
             for m in ("L", "RGB"))


def open_bytes(data: bytes, name: str | None = None) -> Image.Image:
  """`open_image` for ordinary images, the DICOM reader for DICOM (by marker or .dcm name)."""
  if data and dicom.is_dicom(data, name):
    try:
      return Image.fromarray(dicom.read_dicom(data, name), mode="L")
    except ValueError as e:
      raise ImageDecodeError(str(e)) from None
  return open_image(data)


def open_file(path: str) -> Image.Image:
  """An 8-bit Pillow image of any supported file (DICOM included); ImageDecodeError if not."""
  return open_bytes(read_bytes(path), path)


def check_min_side(width: int, height: int, min_side: int) -> None:
  if min(width, height) < min_side:
    raise ImageDecodeError(f"image is {width}x{height}, smaller than the minimum side of "
                           f"{min_side} pixels (config.data.min_image_side)")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How a decoded image becomes a model input (config.data: image_size, channels, ...)."""
  image_size: int
  channels: int = 1
  min_side: int = 1  # Shorter images are skipped with a reason.
  crop_border: float = 0.0  # Fraction of each side cut away before resizing.

  def __post_init__(self):
    if self.channels not in (1, 3):
      raise ValueError(f"channels must be 1 or 3, got {self.channels}.")

  @classmethod
  def from_config(cls, data_config) -> "Preprocess":
    return cls(int(data_config.image_size), int(data_config.channels),
               int(data_config.min_image_side), float(data_config.crop_border))

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, self.channels)

  def apply(self, img: Image.Image) -> np.ndarray:
    """(image_size, image_size, channels) uint8 of an `open_file` result."""
    check_min_side(img.width, img.height, self.min_side)
    return convert_and_resize(img, (self.image_size, self.image_size), self.channels,
                              self.crop_border)


def decode_file(path: str, prep: Preprocess) -> np.ndarray:
  """The model input of one file; ImageDecodeError with the reason if there is none."""
  return prep.apply(open_file(path))


def display_image(img: Image.Image, max_side: int = 320) -> np.ndarray:
  """Gray uint8 (H, W) at the file's aspect ratio, for overlays and figures."""
  img = img.convert("L")
  scale = max_side / max(img.width, img.height)
  if scale < 1:
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.BILINEAR)
  return np.asarray(img, np.uint8)
