"""TensorBoard scalar summaries written without TensorFlow.

An event file of TensorBoard's own protos (`tensorboard.compat.proto`) and record framing
(`RecordWriter`, the TFRecord format with its CRCs): what `flax.metrics.tensorboard` writes
for scalars, without importing TensorFlow, which costs every training process ~5 s of
start-up on 2 cores (most of a debug run once its programs are in the compilation cache).
"""

from __future__ import annotations

import os
import socket
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class ScalarWriter:
  """writer.scalar(tag, value, step); flush(); close(). One new event file per writer."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "wb")
    self._records = RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())

  def scalar(self, tag: str, value: float, step: int) -> None:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                   simple_value=float(value))])
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()
