"""Reading DICOM radiographs as display-ready 8-bit grayscale arrays (pydicom 3).

The pipeline is the one a DICOM viewer applies: decode the (first frame of the)
stored pixels, Modality LUT (Rescale Slope/Intercept or a LUT), VOI LUT or
Window Center/Width (else the pixel data's own min-max), scale to 0-255 and
invert MONOCHROME1 so that bone is bright, as in MONOCHROME2 and in the
JPEG/PNG training images. Colour images are converted to luma.
"""

from __future__ import annotations

import io
import math
import os
from typing import Union

import numpy as np
import pydicom
from pydicom import encaps
from pydicom import pixels
from pydicom.errors import InvalidDicomError

from cxr_jax.data import files

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]

# The decompression-bomb limit of every format (decode sets Pillow's from it): the
# header's Rows x Columns is checked against it before any pixel is allocated.
MAX_IMAGE_PIXELS = 20_000 * 20_000
_MAGIC_OFFSET = 128
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# ITU-R BT.601 luma, the weights Pillow's "L" conversion uses for the JPEG/PNG images.
_LUMA = np.array([0.299, 0.587, 0.114])


def is_dicom(data: bytes, name: str | None = None) -> bool:
  """True for the 'DICM' marker after the 128-byte preamble, or a `name` ending in .dcm."""
  if bytes(data[_MAGIC_OFFSET:_MAGIC_OFFSET + 4]) == b"DICM":
    return True
  return name is not None and os.fspath(name).lower().endswith((".dcm", ".dicom"))


def _read_dataset(src: PathOrBytes, name: str | None = None) -> pydicom.Dataset:
  if isinstance(src, (bytes, bytearray, memoryview)):
    data = bytes(src)
  else:
    name = os.fspath(src)
    data = files.read_bytes(name)  # Refuses FIFOs and devices before opening.
  if not data:
    raise ValueError("empty file (0 bytes)")
  if not is_dicom(data, name):
    raise ValueError("not a DICOM file: no 'DICM' marker at byte 128")
  try:
    # force=True only for .dcm files without the preamble (raw datasets); a file
    # with the marker is parsed strictly.
    has_magic = data[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
  except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"unreadable DICOM file: {type(e).__name__}: {e}") from None
  # A forced read parses any bytes into some dataset; without image elements it
  # was not DICOM at all.
  if not has_magic and "Rows" not in ds and not any(k in ds for k in _PIXEL_KEYWORDS):
    raise ValueError("not a DICOM file: .dcm name, but no 'DICM' marker and no image elements")
  return ds


def _header_int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
  try:
    value = ds.get(keyword, default)  # Converts the raw value: may raise for junk.
    if value in (None, "") and default is not None:
      value = default  # An empty Number of Frames means 1, as pydicom reads it.
    return int(value)
  except (TypeError, ValueError, OverflowError):
    raw = ds.get_item(keyword)
    raw = raw.value if raw is not None else None
    raise ValueError(f"invalid (0028) {keyword} in the header: {raw!r}") from None


def _check_header(ds: pydicom.Dataset, encapsulated: bool) -> None:
  """Refuses, from the header alone, an image that is absurd or does not fit its payload.

  Runs before decoding: a compressed-image decoder allocates what the header declares
  (65535 x 65535 x 16 bits is 8 GiB) before it finds out the payload is tiny.
  """
  rows, cols = _header_int(ds, "Rows"), _header_int(ds, "Columns")
  samples, bits = _header_int(ds, "SamplesPerPixel", 1), _header_int(ds, "BitsAllocated")
  frames = _header_int(ds, "NumberOfFrames", 1) or 1  # 0 is read as 1, as pydicom does.
  if rows < 1 or cols < 1 or frames < 1:
    raise ValueError(f"header declares {frames} frame(s) of {cols}x{rows} pixels")
  if rows * cols > MAX_IMAGE_PIXELS:
    raise ValueError(f"header declares {cols}x{rows} pixels, more than the limit of "
                     f"{MAX_IMAGE_PIXELS} (decompression-bomb protection)")
  if samples not in (1, 3) or bits not in (1, 8, 16, 32, 64):
    raise ValueError(f"unsupported header: {samples} samples per pixel of {bits} bits")
  keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
  payload = ds[keyword].value or b""
  if encapsulated:
    _check_fragments(payload, frames)
    return
  frame_bits = rows * cols * samples * bits
  if str(ds.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
    frame_bits = frame_bits * 2 // 3  # Two chroma samples shared by two pixels.
  expected = math.ceil(frame_bits * frames / 8)
  # Less is truncated; a whole frame more means the header miscounts frames or
  # samples, so the first "frame" would be a different picture. A few bytes more
  # (one at least: odd lengths are padded to even) are padding, which pydicom drops.
  excess = len(payload) - expected
  if excess < 0 or (excess > 1 and excess >= frame_bits / 8):
    raise ValueError(f"pixel data holds {len(payload)} bytes, but the header declares "
                     f"{frames} frame(s) of {cols}x{rows} pixels x {samples} sample(s) x "
                     f"{bits} bits = {expected} bytes")


def _check_fragments(payload: bytes, frames: int) -> None:
  """Every frame of encapsulated pixel data has at least one fragment of its own."""
  try:
    n_items, _ = encaps.parse_fragments(payload)
  except (ValueError, TypeError) as e:
    raise ValueError(f"malformed encapsulated pixel data: {e}") from None
  fragments = n_items - 1  # The first item is the Basic Offset Table.
  if fragments < frames:
    raise ValueError(f"header declares {frames} frame(s), but the encapsulated pixel data "
                     f"holds {max(fragments, 0)} fragment(s)")


def _decode_first_frame(ds: pydicom.Dataset) -> np.ndarray:
  if not any(k in ds for k in _PIXEL_KEYWORDS):
    raise ValueError("no pixel data: the DICOM file has no (7FE0,0010) Pixel Data element")
  for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
    if keyword not in ds:
      raise ValueError(f"incomplete image: (0028) {keyword} is missing")
  meta = getattr(ds, "file_meta", None)
  syntax = meta.get("TransferSyntaxUID") if meta is not None else None
  if syntax is None:
    # A raw dataset (no file meta): its encoding was detected while parsing.
    implicit, little = ds.original_encoding
    if implicit is None:
      raise ValueError("no Transfer Syntax UID and the dataset's encoding is unknown")
    ds.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
    syntax = (pydicom.uid.ImplicitVRLittleEndian if implicit and little else
              pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
    ds.file_meta.TransferSyntaxUID = syntax
  _check_header(ds, syntax.is_encapsulated)
  try:
    # index=0 decodes only the first frame of a multi-frame file; YBR colour is
    # converted to RGB (as_rgb defaults to True).
    arr = pixels.pixel_array(ds, index=0)
  except Exception as e:  # pydicom raises RuntimeError, NotImplementedError, ValueError...
    what = f"{syntax.name} ({syntax})"
    if syntax.is_compressed:
      raise ValueError(f"cannot decode compressed pixel data in {what}; a decoder plugin "
                       f"(e.g. pylibjpeg, pyjpegls, gdcm) may be missing: {e}") from None
    raise ValueError(f"cannot decode pixel data in {what}: {type(e).__name__}: {e}") from None
  if arr.size == 0:
    raise ValueError(f"pixel data is empty (shape {arr.shape})")
  return arr


def _window_range(ds: pydicom.Dataset) -> tuple[float, float]:
  """Output range of pydicom's windowing for this dataset (its [y_min, y_max]).

  Windowing maps everything below/above the window to the extremes of the
  post-Modality-LUT range, so windowing -inf and +inf yields exactly those.
  """
  with np.errstate(over="ignore"):
    lo, hi = pixels.apply_windowing(np.array([-np.inf, np.inf]), ds)
  return float(lo), float(hi)


def _to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
  if not hi > lo:
    return np.zeros(arr.shape, np.uint8)
  scaled = (np.asarray(arr, np.float64) - lo) * (255.0 / (hi - lo))
  return np.round(np.clip(scaled, 0, 255)).astype(np.uint8)


def read_dicom(src: PathOrBytes, name: str | None = None) -> np.ndarray:
  """Decodes a DICOM file (path or bytes) to a (H, W) uint8 image, bone bright.

  `name`, with bytes: the file's name, so a preamble-less `.dcm` file is recognised.

  Raises ValueError with the reason for a non-DICOM or unreadable file, a file
  without pixel data, or pixel data that cannot be decoded (e.g. a compressed
  transfer syntax without an installed decoder).
  """
  ds = _read_dataset(src, name)
  arr = _decode_first_frame(ds)
  photometric = str(ds.PhotometricInterpretation).upper()

  if photometric == "PALETTE COLOR":
    arr = pixels.apply_color_lut(arr, ds)
    photometric = "RGB"
  if photometric not in ("MONOCHROME1", "MONOCHROME2"):
    # RGB (YBR was converted to RGB on decoding): luma, min-max scaled when the
    # samples are wider than 8 bits. Windowing is defined for monochrome only.
    if arr.ndim != 3 or arr.shape[-1] != 3:
      raise ValueError(f"unsupported Photometric Interpretation {photometric} "
                       f"with pixel array of shape {arr.shape}")
    gray = arr.astype(np.float64) @ _LUMA
    if arr.dtype == np.uint8:
      return np.round(gray).astype(np.uint8)
    return _to_uint8(gray, float(gray.min()), float(gray.max()))

  if arr.ndim != 2:
    raise ValueError(f"expected a 2-D monochrome frame, got shape {arr.shape}")
  values = pixels.apply_modality_lut(arr, ds)
  has_voi_lut = bool(ds.get("VOILUTSequence"))
  has_window = "WindowCenter" in ds and "WindowWidth" in ds
  try:
    if has_voi_lut:
      # apply_voi_lut prefers the LUT over the window, as viewers do.
      values = pixels.apply_voi_lut(values, ds)
      lut = np.asarray(ds.VOILUTSequence[0].LUTData)
      lo, hi = float(lut.min()), float(lut.max())
    elif has_window:
      lo, hi = _window_range(ds)
      values = pixels.apply_voi_lut(values, ds)
    else:
      lo, hi = float(np.min(values)), float(np.max(values))
  except (ValueError, NotImplementedError, AttributeError, TypeError) as e:
    raise ValueError(f"invalid VOI LUT / window: {type(e).__name__}: {e}") from None
  out = _to_uint8(values, lo, hi)
  if photometric == "MONOCHROME1":
    out = 255 - out  # MONOCHROME1: the minimum is white; flip so bone is bright.
  return out
