"""Points standard error (the descriptor and sys.stderr) somewhere else, and back.

At the descriptor, not only sys.stderr: tensorstore's C++ threads write to fd 2
directly, and the interpreter puts sys.stderr back while it shuts down.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable, TextIO


def redirect_stderr(target: TextIO) -> Callable[[], None]:
  """Sends fd 2 and sys.stderr to the open file `target`; returns what undoes it."""
  sys.stderr.flush()
  saved_fd, saved_stderr = os.dup(2), sys.stderr
  os.dup2(target.fileno(), 2)
  sys.stderr = target

  def restore() -> None:
    target.flush()
    sys.stderr = saved_stderr
    os.dup2(saved_fd, 2)
    os.close(saved_fd)

  return restore


class CapturedStderr:
  """`with CapturedStderr() as captured:` fd 2 and sys.stderr go to a temporary file
  inside; `captured.text` is what was written there, once out (also after an exception)."""

  text = ""

  def __enter__(self) -> "CapturedStderr":
    self._sink = tempfile.TemporaryFile("w+")  # pylint: disable=consider-using-with
    self._restore = redirect_stderr(self._sink)
    return self

  def __exit__(self, *exc_info) -> None:
    self._restore()
    self._sink.seek(0)
    self.text = self._sink.read()
    self._sink.close()
