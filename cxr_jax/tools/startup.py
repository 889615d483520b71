"""The start-up every command shares: malloc settings, logging, one-line errors, Ctrl-C.

  if __name__ == "__main__":
    startup.run(main)

Expected failures (a missing file, a wrong setting) print one line naming the file
or key and exit 1; `--verbose` shows the traceback. Ctrl-C exits 130 after saying
that re-running the same command resumes. Libraries never call this.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags

from cxr_jax import sharding
from cxr_jax.tools import malloc_tuning

flags.DEFINE_bool("verbose", False, "Show full tracebacks and library log lines.")
flags.DEFINE_bool("distributed", False, "Run as one of several processes (jax.distributed): "
                  "the coordinator, process count and id from the flags below, else from "
                  "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, else detected "
                  "(SLURM, Open MPI, TPU pods). See README.md, 'Several machines'.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")

# Orbax logs every save/restore step at INFO; keep its warnings, drop the chatter.
_QUIET_PACKAGES = (os.sep + "orbax" + os.sep, os.sep + "jax" + os.sep + "_src" + os.sep)


class _DropLibraryInfo(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(p in record.pathname for p in _QUIET_PACKAGES)


def setup_logging() -> None:
  """INFO for cxr_jax, warnings only for Orbax/JAX internals; TensorFlow's C++ logs muted."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_DropLibraryInfo())
  logging.getLogger("absl").setLevel(logging.INFO)


def one_line(error: BaseException) -> str:
  message = str(error).strip().splitlines()
  text = " ".join(line.strip() for line in message) if message else ""
  if isinstance(error, KeyError):
    text = f"missing key {text}"
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _guarded(main: Callable, resume_hint: str | None) -> Callable:
  def wrapped(argv):
    if not flags.FLAGS.verbose:
      setup_logging()
    try:
      if flags.FLAGS.distributed:
        sharding.initialize_distributed(flags.FLAGS.coordinator_address,
                                        flags.FLAGS.num_processes, flags.FLAGS.process_id)
      return main(argv)
    except KeyboardInterrupt:
      print("\nInterrupted." + (f" {resume_hint}" if resume_hint else ""), file=sys.stderr)
      sys.exit(130)
    except app.UsageError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if flags.FLAGS.verbose:
        raise
      print(f"error: {one_line(e)}\n(run with --verbose for the traceback)", file=sys.stderr)
      sys.exit(1)
  return wrapped


def run(main: Callable, resume_hint: str | None = None) -> None:
  """Restarts once with the malloc settings, then runs `main` under absl with clean errors."""
  malloc_tuning.reexec_with_tunables()
  app.run(_guarded(main, resume_hint))
