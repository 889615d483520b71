"""Console logging for the command-line entry points (libraries never call this)."""

from __future__ import annotations

import logging
import os

# Orbax logs every save/restore step at INFO; keep its warnings, drop the chatter.
_QUIET_PACKAGES = (os.sep + "orbax" + os.sep, os.sep + "jax" + os.sep + "_src" + os.sep)


class _DropLibraryInfo(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(p in record.pathname for p in _QUIET_PACKAGES)


def setup() -> None:
  """INFO for cxr_jax, warnings only for Orbax/JAX internals; TensorFlow's C++ logs muted."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_DropLibraryInfo())
  logging.getLogger("absl").setLevel(logging.INFO)
