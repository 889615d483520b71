"""TensorFlow (and TensorFlow Datasets), imported without their native start-up chatter.

TensorFlow's C++ runtime prints lines such as "oneDNN custom operations are on" to the
process's stderr when it loads, before any logging can be configured and whatever
TF_CPP_MIN_LOG_LEVEL says. They are dropped during the import only; a failed import
still raises its Python error. CXR_JAX_VERBOSE=1 (set by --verbose) keeps them.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _native_stderr_silenced():
  if os.environ.get("CXR_JAX_VERBOSE") == "1":
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def tensorflow():
  with _native_stderr_silenced():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # tf.data only runs on the host: keep TensorFlow off any GPU so JAX gets its memory.
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # Already initialised by the caller; leave it be.
      pass
  return tf


def tensorflow_datasets():
  tensorflow()
  with _native_stderr_silenced():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds
