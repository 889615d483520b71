"""onnx_ir's warning about jax2onnx's untyped shape tensors, dropped while a model is converted.

jax2onnx 0.17 leaves untyped the two int64 shape tensors it builds for each reshape to a shape
that holds the dynamic batch, and onnx_ir then warns "The value type for shape [k] is not
known ... Skipping serialization" for each. It leaves out only their optional shape
annotations (value_info), not the graph, so the runtime's results are unchanged (export's
parity check runs the file). onnx_ir's other warnings still show.
"""

from __future__ import annotations

import contextlib
import logging

LOGGER = "onnx_ir.serde"
MESSAGE = "The value type for shape"  # The start of the warning's format string.


def _not_untyped_shape(record: logging.LogRecord) -> bool:
  return not str(record.msg).startswith(MESSAGE)


@contextlib.contextmanager
def untyped_shape_warnings_dropped():
  logger = logging.getLogger(LOGGER)
  logger.addFilter(_not_untyped_shape)
  try:
    yield
  finally:
    logger.removeFilter(_not_untyped_shape)
