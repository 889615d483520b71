"""Hostile members of data folders: FIFOs, devices, sockets, links out, folders, bombs.

Each must end as a counted skip with its reason (or a clear error), never a hang, an
endless read or a silently wrong image. Every input is made here in tmp_path.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import zlib

import pytest
from PIL import Image

from configs import base as base_config
from cxr_jax import data as data_lib
from cxr_jax.data import decode
from cxr_jax.data import files
from cxr_jax.data import folder
from tests.conftest import make_class_folder, write_image

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def within(seconds: float, fn, *args):
  """fn(*args), failing instead of hanging the suite when it blocks."""
  result = {}

  def run():
    try:
      result["value"] = fn(*args)
    except BaseException as e:  # pylint: disable=broad-except  # Re-raised below.
      result["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"{fn.__name__} still running after {seconds}s"
  if "error" in result:
    raise result["error"]
  return result["value"]


def reasons(data) -> dict[str, str]:
  return {os.path.basename(s["path"]): s["reason"] for s in data.skipped}


def load(folder_path):
  return within(60, data_lib.load_folder, str(folder_path), data_lib.Preprocess(16, 1))


def test_fifo_in_a_class_folder_is_skipped_without_opening_it(tmp_path):
  root = make_class_folder(tmp_path / "f", n_per_class=2)
  os.mkfifo(root / "NORMAL" / "IM-0900-0001.jpeg")  # Opening it to read would block.
  data = load(root)
  assert len(data) == 4
  assert reasons(data) == {"IM-0900-0001.jpeg": "not a regular file: a FIFO (named pipe)"}


def test_fifo_found_by_searching_a_folder_is_skipped(tmp_path):
  write_image(tmp_path / "in" / "a.png", seed=0)
  os.mkfifo(tmp_path / "in" / "pipe")  # Extension-less names are searched (DICOM).
  data = within(60, data_lib.load_files, [str(tmp_path / "in")], data_lib.Preprocess(16, 1))
  assert len(data) == 1 and reasons(data) == {"pipe": "not a regular file: a FIFO (named pipe)"}


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_link_to_an_endless_device(tmp_path, device):
  if not os.path.exists(device):
    pytest.skip(f"{device} does not exist here")
  root = make_class_folder(tmp_path / "f", n_per_class=2)
  os.symlink(device, root / "PNEUMONIA" / "x.png")
  data = load(root)
  assert len(data) == 4
  assert reasons(data) == {"x.png": f"symlink outside the folder (to {device})"}
  # Named directly (no folder to leave), the device is refused from stat.
  with pytest.raises(decode.ImageDecodeError, match="not a regular file: a character device"):
    within(10, decode.read_bytes, str(root / "PNEUMONIA" / "x.png"))


def test_socket_is_refused(tmp_path):
  path = tmp_path / "s.png"
  with socket.socket(socket.AF_UNIX) as sock:
    sock.bind(str(path))
    with pytest.raises(decode.ImageDecodeError, match="not a regular file: a socket"):
      within(10, decode.read_bytes, str(path))


def test_links_out_of_the_folder_are_skipped_and_links_inside_are_read(tmp_path):
  root = make_class_folder(tmp_path / "f", n_per_class=2)
  write_image(tmp_path / "elsewhere.png", seed=7)
  write_image(root / "pool" / "shared.png", seed=8)
  os.symlink("/etc/passwd", root / "NORMAL" / "IM-0901-0001.jpeg")
  os.symlink(tmp_path / "elsewhere.png", root / "NORMAL" / "IM-0902-0001.png")
  os.symlink("../pool/shared.png", root / "PNEUMONIA" / "person900_virus_1.png")
  data = load(root)
  assert len(data) == 5 and "person900_virus_1.png" in {os.path.basename(p) for p in data.paths}
  got = reasons(data)
  assert got == {"IM-0901-0001.jpeg": "symlink outside the folder (to /etc/passwd)",
                 "IM-0902-0001.png":
                     f"symlink outside the folder (to {tmp_path / 'elsewhere.png'})"}


def test_a_folder_that_is_itself_a_link_still_works(tmp_path):
  # As data/chest_xray -> ../shared/...: members are checked against the resolved root.
  make_class_folder(tmp_path / "real", n_per_class=2)
  os.symlink(tmp_path / "real", tmp_path / "linked")
  data = load(tmp_path / "linked")
  assert len(data) == 4 and not data.skipped
  files = data_lib.load_files([str(tmp_path / "linked")], data_lib.Preprocess(16, 1))
  assert len(files) == 4 and not files.skipped


def test_train_member_linking_into_test_is_skipped(tmp_path):
  # A link across splits would put a test image into training.
  make_class_folder(tmp_path / "d" / "train", n_per_class=6)
  make_class_folder(tmp_path / "d" / "test", n_per_class=2)
  os.symlink("../../test/NORMAL/IM-0100-0000.jpeg",
             tmp_path / "d" / "train" / "NORMAL" / "IM-0950-0001.jpeg")
  config = base_config.get_config().data
  config.data_dir, config.image_size, config.val_fraction = str(tmp_path / "d"), 16, 0.3
  train, val = within(60, folder.load_train_val, config)
  assert len(train) + len(val) == 12 and not val.skipped
  assert list(reasons(train)) == ["IM-0950-0001.jpeg"]
  assert reasons(train)["IM-0950-0001.jpeg"].startswith("symlink outside the folder")


def test_broken_link_out_keeps_its_read_error(tmp_path):
  root = make_class_folder(tmp_path / "f", n_per_class=2)
  os.symlink(tmp_path / "gone.png", root / "NORMAL" / "x.png")
  assert "No such file" in reasons(load(root))["x.png"]


def test_a_folder_named_like_an_image(tmp_path):
  root = make_class_folder(tmp_path / "f", n_per_class=2)
  write_image(root / "NORMAL" / "a.png" / "inner.png", seed=3)
  data = load(root)
  assert len(data) == 4 and reasons(data) == {"a.png": folder.SUBFOLDER_REASON}
  # Searching a folder walks it; given directly, it is a folder and searched too.
  for given in (root, root / "NORMAL" / "a.png"):
    assert any(p.endswith("a.png/inner.png") for p in data_lib.expand_paths([str(given)]))
  with pytest.raises(decode.ImageDecodeError, match="not a regular file: a directory"):
    decode.read_bytes(str(root / "NORMAL" / "a.png"))


def test_searched_folder_links_are_not_followed(tmp_path):
  write_image(tmp_path / "in" / "a.png", seed=0)
  write_image(tmp_path / "out" / "b.png", seed=1)
  os.symlink(tmp_path / "out", tmp_path / "in" / "outside")
  os.symlink(tmp_path / "in", tmp_path / "in" / "loop")  # Inside: searched anyway.
  os.symlink("/etc/passwd", tmp_path / "in" / "c.jpeg")
  data = data_lib.load_files([str(tmp_path / "in")], data_lib.Preprocess(16, 1))
  assert [os.path.basename(p) for p in data.paths] == ["a.png"]
  assert {k: v.split(" (")[0] for k, v in reasons(data).items()} == {
      "c.jpeg": "symlink outside the folder", "outside": "symlink outside the folder"}
  assert data_lib.expand_paths([str(tmp_path / "in")]) == [str(tmp_path / "in" / "a.png")]
  # A link named directly is the user's choice and is read.
  assert data_lib.expand_paths([str(tmp_path / "in" / "c.jpeg")]) == [
      str(tmp_path / "in" / "c.jpeg")]


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
  monkeypatch.setattr(files, "MAX_FILE_BYTES", 100)
  (tmp_path / "big.png").write_bytes(bytes(200))
  with pytest.raises(decode.ImageDecodeError, match="more than the limit of 100"):
    decode.read_bytes(str(tmp_path / "big.png"))


def _png_header(width: int, height: int) -> bytes:
  """A PNG that declares its size and holds no pixels."""
  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_png_declaring_too_many_pixels_is_refused_from_its_header():
  # 25000^2 is between Pillow's limit and twice it, where Pillow itself only warns.
  with pytest.warns(Image.DecompressionBombWarning), pytest.raises(decode.ImageDecodeError,
                                               match="25000x25000, more than the limit"):
    decode.open_image(_png_header(25_000, 25_000))


@pytest.mark.skipif(IS_ROOT, reason="root reads files regardless of their permissions")
def test_unreadable_file_and_folder(tmp_path):
  write_image(tmp_path / "in" / "a.png", seed=0)
  write_image(tmp_path / "in" / "locked" / "b.png", seed=1)
  os.chmod(tmp_path / "in" / "a.png", 0)
  os.chmod(tmp_path / "in" / "locked", 0)
  try:
    data = data_lib.load_files([str(tmp_path / "in")], data_lib.Preprocess(16, 1))
    assert len(data) == 0
    assert reasons(data) == {"a.png": "cannot read: Permission denied",
                             "locked": "cannot list folder: Permission denied"}
  finally:
    os.chmod(tmp_path / "in" / "locked", 0o755)


def test_permission_errors_as_root_would_see_them_otherwise(tmp_path, monkeypatch):
  # Root reads through chmod 000, so the errors a user would get are raised here.
  write_image(tmp_path / "in" / "a.png", seed=0)
  (tmp_path / "in" / "locked").mkdir()
  real_open, real_walk = os.open, os.walk

  def no_open(path, *args, **kwargs):
    if str(path).endswith("a.png"):
      raise PermissionError(13, "Permission denied", path)
    return real_open(path, *args, **kwargs)

  def no_listing(top, onerror=None, **kwargs):
    for root, dirs, files in real_walk(top, onerror=onerror, **kwargs):
      if root.endswith("locked"):
        onerror(PermissionError(13, "Permission denied", root))
        continue
      yield root, dirs, files

  monkeypatch.setattr(os, "open", no_open)
  monkeypatch.setattr(os, "walk", no_listing)
  data = data_lib.load_files([str(tmp_path / "in")], data_lib.Preprocess(16, 1))
  assert len(data) == 0
  assert reasons(data) == {"a.png": "cannot read: Permission denied",
                           "locked": "cannot list folder: Permission denied"}
