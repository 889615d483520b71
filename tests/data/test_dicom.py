"""DICOM decoding: Modality LUT, windowing, MONOCHROME1, multi-frame, RGB and errors.

Every file is written here with pydicom (uncompressed Explicit VR Little Endian
unless a test needs otherwise).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from cxr_jax.data import dicom


def _dataset(syntax=ExplicitVRLittleEndian) -> Dataset:
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = syntax
  ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
  ds.SOPInstanceUID = pydicom.uid.generate_uid()
  ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
  ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
  return ds


def _to_bytes(ds: Dataset) -> bytes:
  buf = io.BytesIO()
  ds.save_as(buf, enforce_file_format=True)
  return buf.getvalue()


def _dicom(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
           **elements) -> bytes:
  ds = _dataset()
  ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
  for keyword, value in elements.items():
    setattr(ds, keyword, value)
  return _to_bytes(ds)


# Stored values in a 12-bit range; with slope 2 / intercept -1000 they become
# -1000, -200, 0, 200, 7190 (e.g. Hounsfield-like units).
STORED = np.array([[0, 400, 500, 600, 4095]] * 3, np.uint16)


def test_modality_lut_then_window(tmp_path):
  path = tmp_path / "xr.dcm"
  path.write_bytes(_dicom(STORED, RescaleSlope=2, RescaleIntercept=-1000,
                          WindowCenter=0, WindowWidth=400))
  out = dicom.read_dicom(str(path))
  assert out.dtype == np.uint8 and out.shape == (3, 5)
  # Window [-200, 200]: below -> black, centre -> mid-grey, above -> white. Without
  # the rescale, stored 500 would be far outside the window (all black or white).
  np.testing.assert_array_equal(out[0], [0, 0, 128, 255, 255])
  assert dicom.read_dicom(path.read_bytes()).tolist() == out.tolist()  # bytes == path


def test_window_is_applied_on_rescaled_values():
  # Window centred on stored value 1000 with slope 1 vs slope 0.5: the same stored
  # pixel lands at the window centre only when the slope is applied first.
  stored = np.array([[1000, 2000]], np.uint16)
  plain = dicom.read_dicom(_dicom(stored, WindowCenter=1000, WindowWidth=200))
  halved = dicom.read_dicom(_dicom(stored, RescaleSlope=0.5, RescaleIntercept=0,
                                      WindowCenter=1000, WindowWidth=200))
  assert plain[0, 0] in (127, 128) and plain[0, 1] == 255
  assert halved[0, 0] == 0 and halved[0, 1] in (127, 128)


def test_no_window_uses_min_max():
  out = dicom.read_dicom(_dicom(STORED))
  assert out.min() == 0 and out.max() == 255
  assert np.all(np.diff(out[0].astype(int)) > 0)
  np.testing.assert_allclose(out[0], STORED[0].astype(float) * 255 / 4095, atol=0.5)


def test_monochrome1_is_inverted():
  mono2 = dicom.read_dicom(_dicom(STORED, "MONOCHROME2"))
  mono1 = dicom.read_dicom(_dicom(STORED, "MONOCHROME1"))
  np.testing.assert_array_equal(mono1, 255 - mono2)
  windowed = dicom.read_dicom(_dicom(STORED, "MONOCHROME1", RescaleSlope=2,
                                        RescaleIntercept=-1000, WindowCenter=0, WindowWidth=400))
  np.testing.assert_array_equal(windowed[0], [255, 255, 127, 0, 0])


def test_multi_frame_takes_first_frame():
  frames = np.stack([np.arange(12, dtype=np.uint16).reshape(3, 4) * 300,
                     np.full((3, 4), 7, np.uint16)])
  out = dicom.read_dicom(_dicom(frames))
  assert out.shape == (3, 4)
  np.testing.assert_array_equal(out, dicom.read_dicom(_dicom(frames[0])))


def test_rgb_is_converted_to_luma():
  rgb = np.zeros((2, 3, 3), np.uint8)
  rgb[:, 0] = (255, 0, 0)
  rgb[:, 1] = (0, 255, 0)
  rgb[:, 2] = (200, 200, 200)
  out = dicom.read_dicom(_dicom(rgb, "RGB", 8))
  assert out.shape == (2, 3)
  np.testing.assert_array_equal(out[0], [76, 150, 200])


def test_signed_pixels():
  signed = np.array([[-2048, 0, 2047]], np.int16)
  out = dicom.read_dicom(_dicom(signed))
  np.testing.assert_array_equal(out[0], [0, 128, 255])


def test_is_dicom():
  data = _dicom(STORED)
  assert dicom.is_dicom(data)
  assert not dicom.is_dicom(b"\x89PNG\r\n\x1a\n" + bytes(200))
  assert dicom.is_dicom(b"", name="scan.DCM")
  # Without the preamble only the name tells.
  assert not dicom.is_dicom(data[132:]) and dicom.is_dicom(data[132:], "x.dcm")


def test_file_without_preamble_named_dcm(tmp_path):
  path = tmp_path / "raw.dcm"
  path.write_bytes(_dicom(STORED)[132:])
  np.testing.assert_array_equal(dicom.read_dicom(str(path)),
                                dicom.read_dicom(_dicom(STORED)))


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + bytes(300), "not a DICOM file"),
    (b"just some text" * 20, "not a DICOM file"),
])
def test_non_dicom_raises(data, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    dicom.read_dicom(data)
  path = tmp_path / "fake.dcm"  # A .dcm name does not make text DICOM.
  path.write_bytes(data)
  with pytest.raises(ValueError, match=match if data else "empty"):
    dicom.read_dicom(str(path))


def test_no_pixel_data_raises():
  ds = _dataset()
  ds.Rows, ds.Columns = 4, 4
  with pytest.raises(ValueError, match="no pixel data"):
    dicom.read_dicom(_to_bytes(ds))


def test_compressed_without_decoder_raises():
  ds = _dataset(JPEGLSLossless)  # No JPEG-LS decoder is a dependency of this project.
  ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not really jpeg-ls\xff\xd9"])
  ds["PixelData"].VR = "OB"
  with pytest.raises(ValueError, match="JPEG-LS"):
    dicom.read_dicom(_to_bytes(ds))


def _header_only(rows, cols, syntax=ExplicitVRLittleEndian, samples=1, frames=None,
                 payload=b"\x00" * 16) -> bytes:
  """A 16-bit image whose header says what it likes; `payload` is the pixel data."""
  ds = _dataset(syntax)
  ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
  if samples == 3:
    ds.PlanarConfiguration = 0
  if frames is not None:
    ds.NumberOfFrames = frames
  ds.PixelData = payload
  if syntax.is_encapsulated:
    ds["PixelData"].VR = "OB"
  return _to_bytes(ds)


@pytest.mark.parametrize("syntax, payload", [
    (ExplicitVRLittleEndian, b"\x00" * 16),
    # RLE: pydicom's decoder would allocate the declared 8 GiB before decoding.
    (RLELossless, encapsulate([b"\x00" * 64])),
])
def test_absurd_dimensions_are_refused_from_the_header(monkeypatch, syntax, payload):
  def must_not_decode(*args, **kwargs):
    raise AssertionError("pixel data decoded despite an absurd header")
  monkeypatch.setattr(dicom.pixels, "pixel_array", must_not_decode)
  for rows, cols in ((65535, 65535), (20_001, 20_000)):
    with pytest.raises(ValueError, match=f"{cols}x{rows} pixels, more than the limit"):
      dicom.read_dicom(_header_only(rows, cols, syntax, payload=payload))


@pytest.mark.parametrize("header, match", [
    ({"frames": 10**9}, "8 bytes, but the header declares 1000000000 frame"),
    ({"frames": 3}, "8 bytes, but the header declares 3 frame"),
    ({"samples": 3}, "8 bytes, but the header declares 1 frame.*3 sample"),
    # 2x2 declared, 2x2x3 stored (e.g. RGB saved as gray): the "first frame" would
    # be a different picture.
    ({"payload": bytes(24)}, "24 bytes, but the header declares 1 frame"),
])
def test_header_that_does_not_fit_the_payload(header, match):
  with pytest.raises(ValueError, match=match):
    dicom.read_dicom(_header_only(2, 2, **{"payload": bytes(8), **header}))


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_number_of_frames_that_is_not_a_number():
  # pydicom will not write it, so the stored "7 " is overwritten with "many".
  data = _header_only(2, 2, frames=7, payload=bytes(8))
  element = b"\x28\x00\x08\x00IS\x02\x007 "
  assert data.count(element) == 1
  data = data.replace(element, b"\x28\x00\x08\x00IS\x04\x00many")
  with pytest.raises(ValueError, match="invalid \\(0028\\) NumberOfFrames in the header: "
                                       "'many'"):
    dicom.read_dicom(data)


def test_padding_after_the_pixels_is_tolerated():
  with pytest.warns(UserWarning, match="excess padding"):  # pydicom drops it.
    out = dicom.read_dicom(_header_only(2, 2, payload=bytes(8) + b"\x00\x00"))
  assert out.shape == (2, 2)
  # A one-pixel 8-bit image: its byte is padded to two, more than its whole frame.
  assert dicom.read_dicom(_dicom(np.array([[9]], np.uint8), bits_stored=8)).shape == (1, 1)


def test_more_frames_than_fragments_is_refused():
  data = _header_only(4, 4, RLELossless, frames=1000, payload=encapsulate([b"\x00" * 64]))
  with pytest.raises(ValueError, match="1000 frame\\(s\\), but the encapsulated pixel data "
                                       "holds 1 fragment"):
    dicom.read_dicom(data)


def test_dicom_path_that_is_a_fifo_is_refused(tmp_path):
  os.mkfifo(tmp_path / "scan.dcm")
  with pytest.raises(ValueError, match="FIFO"):
    dicom.read_dicom(str(tmp_path / "scan.dcm"))
