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
from absl import logging as absl_logging

from cxr_jax import sharding
from cxr_jax.runtime import stderr_redirect
from cxr_jax.tools import malloc_tuning

flags.DEFINE_bool("verbose", False, "Show full tracebacks and library log lines.")
flags.DEFINE_bool("distributed", False, "Run as one of several processes (jax.distributed): "
                  "the coordinator, process count and id from the flags below, else from "
                  "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, else detected "
                  "(SLURM, Open MPI, TPU pods). See README.md, 'Several machines'.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")

_OURS = (os.sep + "cxr_jax" + os.sep, os.sep + "launch.py")
# Loggers whose INFO lines go to the workdir's log file only.
_FILE_ONLY = ("cxr_jax.steps", "cxr_jax.details")


class _ConsoleFilter(logging.Filter):
  """On the console: this project's INFO lines (not per-step ones) and everyone's warnings."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return (any(p in record.pathname for p in _OURS)
            and not record.name.startswith(_FILE_ONLY))


class _ConciseFormatter(logging.Formatter):
  """Time and message; libraries' tracebacks stay in the log file (--verbose shows them)."""

  def format(self, record: logging.LogRecord) -> str:
    record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                    "stack_info": None})
    text = super().format(record)
    return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


def setup_logging() -> None:
  """Concise console lines (time and message) for this project; libraries' INFO muted."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(_ConciseFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
  handler.addFilter(_ConsoleFilter())
  logging.getLogger("absl").setLevel(logging.INFO)
  logging.getLogger().setLevel(logging.INFO)


class _WorkdirLogHandler(logging.FileHandler):
  """A FileHandler that, when its file can't be written (a full disk), says so in one line
  and stops, instead of logging's "--- Logging error ---" traceback for every record (from
  every thread: Orbax's background threads log their own failures too)."""

  failed = False

  def emit(self, record: logging.LogRecord) -> None:
    if not self.failed:
      super().emit(record)

  def handleError(self, record: logging.LogRecord) -> None:  # pylint: disable=invalid-name
    error = sys.exc_info()[1]
    if not isinstance(error, OSError):
      super().handleError(record)
      return
    self.failed = True
    print(f"warning: {self.baseFilename}: log lines no longer written ({one_line(error)})",
          file=sys.stderr, flush=True)


def log_to_file(path: str) -> None:
  """Every INFO line, with absl's full prefix, appended to `path` (a workdir's log)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  handler = _WorkdirLogHandler(path)
  handler.setFormatter(absl_logging.PythonFormatter())
  handler.setLevel(logging.INFO)
  logging.getLogger().addHandler(handler)


def one_line(error: BaseException) -> str:
  message = str(error).strip().splitlines()
  text = " ".join(line.strip() for line in message) if message else ""
  if isinstance(error, KeyError):
    text = f"missing key {text}"
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _quiet_shutdown() -> None:
  """After the one-line error: nothing more on the console from threads dying at exit.

  A failed Orbax restore can leave a tensorstore future whose callback reaches its
  asyncio loop after the interpreter closed it ("Event loop is closed", printed by the
  thread's excepthook): noise after the error the user was given, not a second error.
  """
  stderr_redirect.redirect_stderr(open(os.devnull, "w"))  # pylint: disable=consider-using-with


def _guarded(main: Callable, resume_hint: str | None, positional: bool) -> Callable:
  def wrapped(argv):
    if len(argv) > 1 and not positional:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if flags.FLAGS.verbose:
      os.environ["CXR_JAX_VERBOSE"] = "1"
    else:
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
      _quiet_shutdown()
      sys.exit(1)
  return wrapped


def run(main: Callable, resume_hint: str | None = None, positional: bool = False) -> None:
  """Restarts once with the malloc settings, then runs `main(argv)` under absl with clean
  errors; positional arguments are refused unless `positional` (they are then argv[1:])."""
  malloc_tuning.prepare_process()
  app.run(_guarded(main, resume_hint, positional))
