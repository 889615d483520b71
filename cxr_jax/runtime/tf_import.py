"""TensorFlow (and TensorFlow Datasets) and the LiteRT interpreter, started without their
native start-up chatter.

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


def litert_interpreter(path: str):
  """The LiteRT interpreter of a .tflite file, its tensors allocated. ai-edge-litert: the
  maintained successor of tf.lite.Interpreter, which is deprecated.

  The first allocation applies the XNNPACK delegate and prints "INFO: Created TensorFlow
  Lite XNNPACK delegate for CPU." whatever TF_CPP_MIN_LOG_LEVEL says; that line is dropped.
  A failed allocation still raises its Python error, which carries the interpreter's message.
  """
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=path)
  with _native_stderr_silenced():
    interpreter.allocate_tensors()
  return interpreter
