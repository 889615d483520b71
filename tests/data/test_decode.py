import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import decode
from tests.conftest import write_image


@pytest.mark.parametrize("mode,ext", [("L", "jpeg"), ("RGB", "jpeg"), ("CMYK", "jpeg"),
                                      ("L", "png"), ("RGB", "png"), ("RGBA", "png"),
                                      ("I;16", "png")])
@pytest.mark.parametrize("channels", [1, 3])
def test_decodes_every_kind_to_the_requested_shape(tmp_path, mode, ext, channels):
  path = tmp_path / f"img.{ext}"
  write_image(path, seed=0, size=(37, 91), mode=mode)
  arr = decode.convert_and_resize(decode.open_file(str(path)), (32, 48), channels)
  assert arr.shape == (32, 48, channels) and arr.dtype == np.uint8
  assert arr.std() > 0  # Not a blank image.


def test_16bit_png_is_windowed_to_its_own_range(tmp_path):
  data = np.linspace(100, 1123, 64 * 64).reshape(64, 64).astype(np.uint16)  # 10-bit data
  Image.fromarray(data).save(tmp_path / "x.png")
  arr = decode.decode_file(str(tmp_path / "x.png"), decode.Preprocess(64, 1))
  assert arr.min() == 0 and arr.max() == 255


def test_gray_to_rgb_replicates_the_channel(tmp_path):
  write_image(tmp_path / "g.png", seed=1, mode="L")
  rgb = decode.decode_file(str(tmp_path / "g.png"), decode.Preprocess(20, 3))
  assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_full_resolution_sample_files(fullres_dir):
  files = sorted(p for p in fullres_dir.rglob("*") if p.is_file())
  assert len(files) == 40
  modes = set()
  for path in files:
    modes.add(Image.open(path).mode)
    arr = decode.decode_file(str(path), decode.Preprocess(64, 3))
    assert arr.shape == (64, 64, 3) and arr.std() > 0, path
  assert {"L", "RGB"} <= modes


def test_stored_copies_reach_the_model_input_by_pillow_bilinear(fullres_dir, chest_xray_dir):
  """The input trained models and the TFDS build rest on: gray, then Pillow's bilinear."""
  for original in sorted(p for p in fullres_dir.rglob("*") if p.is_file())[::8]:
    copy = chest_xray_dir / "train" / original.parent.name / original.name
    expected = np.asarray(Image.open(copy).convert("L").resize((160, 160), Image.BILINEAR))
    np.testing.assert_array_equal(decode.decode_file(str(copy), decode.Preprocess(160, 1)),
                                  expected[..., None])


def test_bad_files_raise_with_a_reason(tmp_path):
  write_image(tmp_path / "ok.jpeg", seed=0, size=(64, 64))
  good = (tmp_path / "ok.jpeg").read_bytes()
  cases = {"empty": b"", "text": b"not an image at all", "truncated": good[: len(good) // 3],
           "garbage": good[:20] + bytes(200)}
  for name, data in cases.items():
    with pytest.raises(decode.ImageDecodeError) as err:
      decode.decode_image(data, (8, 8), 1)
    assert str(err.value), name
