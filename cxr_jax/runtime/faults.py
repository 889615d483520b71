"""Fault injection for the resume tests: kill this process at a chosen point of training.

With CXR_JAX_KILL_AT=N set, the N-th call of `point()` (counting every named point the
run passes: each train step, before and after each resume point is written, each
phase start) sends SIGKILL to this process, optionally after CXR_JAX_KILL_DELAY
seconds on a timer thread, so that the kill lands inside whatever the run does next
(a checkpoint write, say). Unset, `point()` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

KILL_AT = "CXR_JAX_KILL_AT"
KILL_DELAY = "CXR_JAX_KILL_DELAY"
POINTS_FILE = "CXR_JAX_POINTS_FILE"  # Set: every point passed is appended to this file.
_passed = [0]  # Points passed by this process.


def _kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
  """One place where a stop can happen; `name` documents it (and shows in tracebacks)."""
  log = os.environ.get(POINTS_FILE)
  if log:
    with open(log, "a") as f:
      f.write(name + "\n")
  target = os.environ.get(KILL_AT)
  if not target:
    return
  _passed[0] += 1
  if _passed[0] != int(target):
    return
  delay = float(os.environ.get(KILL_DELAY, "0") or 0)
  if delay > 0:
    threading.Timer(delay, _kill).start()
  else:
    _kill()
