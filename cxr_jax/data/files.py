"""Reading a user's file safely: regular files only, bounded in size.

The one place bytes come off disk for decoding (images, DICOM, the TFDS build), so a
FIFO, a device or a runaway file is refused the same way everywhere.
"""

from __future__ import annotations

import os
import stat

# Files are read whole into memory; a larger one (a sparse file, a runaway export) is
# refused before reading. Multi-frame DICOMs of a few hundred MB stay far below it.
MAX_FILE_BYTES = 4 << 30

# What a path that is not a regular file is, for the skip reason.
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


class ImageDecodeError(ValueError):
  """A file that is empty, truncated, corrupt or not an image."""


def _not_regular(mode: int) -> str:
  """'' for a regular file, else why it cannot be read as one."""
  if stat.S_ISREG(mode):
    return ""
  kind = next((name for test, name in _FILE_KINDS if test(mode)), "an unknown kind of file")
  return f"not a regular file: {kind}"


def _check_file(st: os.stat_result) -> None:
  reason = _not_regular(st.st_mode)
  if reason:
    raise ImageDecodeError(reason)
  if st.st_size > MAX_FILE_BYTES:
    raise ImageDecodeError(f"file is {st.st_size} bytes, more than the limit of "
                           f"{MAX_FILE_BYTES} (files.MAX_FILE_BYTES)")


def read_bytes(path: str) -> bytes:
  """A regular file's bytes; ImageDecodeError naming the reason when it cannot be read.

  FIFOs, devices, sockets and directories (also behind a symlink) are refused from
  stat, before opening: opening a FIFO blocks until a writer comes, and /dev/zero
  or /dev/urandom never end; opening some devices has side effects.
  """
  try:
    _check_file(os.stat(path))
    # O_NONBLOCK: a FIFO swapped in after the stat still cannot block the open; the
    # fstat of what was opened then refuses it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                 | getattr(os, "O_BINARY", 0))
    with open(fd, "rb", closefd=True) as f:
      _check_file(os.fstat(fd))
      data = f.read(MAX_FILE_BYTES + 1)  # Bounded even if the size said otherwise.
  except OSError as e:  # Missing, a broken link, a link loop, no permission.
    raise ImageDecodeError(f"cannot read: {e.strerror or type(e).__name__}") from None
  if len(data) > MAX_FILE_BYTES:
    raise ImageDecodeError(f"file is more than the limit of {MAX_FILE_BYTES} bytes "
                           "(files.MAX_FILE_BYTES)")
  return data
