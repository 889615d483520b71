"""The command lines' start-up helper: one error line, and nothing after it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

# A main that fails while a worker thread is still running and fails later, during
# shutdown: as a tensorstore callback does after a failed Orbax restore.
PROGRAM = textwrap.dedent("""
    import threading, time
    from cxr_jax.tools import startup

    def late_failure():
      time.sleep(0.5)
      raise RuntimeError("Event loop is closed")

    class Finaliser:  # Prints from the interpreter's own shutdown, after sys.stderr is reset.
      def __del__(self):
        import os
        os.write(2, b"Traceback (from a C++ thread at shutdown)\\n")

    FINALISER = Finaliser()

    def main(argv):
      threading.Thread(target=late_failure).start()
      raise ValueError("config.batch_size=0: must be positive")

    startup.run(main)
""")


def test_an_error_is_one_line_even_when_a_thread_dies_after_it():
  proc = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True,
                        text=True, timeout=120,
                        env={**os.environ, "CXR_JAX_MALLOC_TUNING": "0", "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1
  assert proc.stderr.startswith("error: ValueError: config.batch_size=0"), proc.stderr
  assert "Traceback" not in proc.stderr and "Event loop" not in proc.stderr, proc.stderr


def test_verbose_still_shows_the_traceback():
  proc = subprocess.run([sys.executable, "-c", PROGRAM, "--verbose"], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "CXR_JAX_MALLOC_TUNING": "0", "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0 and "Traceback" in proc.stderr


SETTLE = textwrap.dedent("""
    import os, sys, threading, time
    from cxr_jax import checkpoints

    def straggler():  # A read that outlives a failed restore, printing as it dies.
      time.sleep(0.2)
      os.write(2, b"Traceback (from the descriptor)\\\\n")
      print("Traceback (from sys.stderr)", file=sys.stderr)

    threading.Thread(target=straggler).start()
    checkpoints._settle_failed_reads(1.0)
    print("error: Checkpoint ... is unreadable", file=sys.stderr)
""")


def test_reads_outliving_a_failed_restore_do_not_reach_the_console():
  proc = subprocess.run([sys.executable, "-c", SETTLE], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == "error: Checkpoint ... is unreadable\n", proc.stderr


def _run(program: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", program, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120,
                        env={**os.environ, "CXR_JAX_MALLOC_TUNING": "0", "JAX_PLATFORMS": "cpu"})


def test_positional_arguments_are_refused_unless_the_command_takes_them():
  program = textwrap.dedent("""
      import sys
      from cxr_jax.tools import startup
      startup.run(lambda argv: print("ran with", argv[1:]), positional=sys.argv[-1] == "files")
  """)
  refused = _run(program, "stray")
  assert refused.returncode == 1 and "Unexpected arguments: ['stray']" in refused.stderr
  assert "ran with" not in refused.stdout
  taken = _run(program, "a.png", "files")
  assert taken.returncode == 0 and "ran with ['a.png', 'files']" in taken.stdout


def test_a_full_disk_under_the_workdir_log_is_one_line_not_a_traceback_per_record(
    tmp_path, capsys):
  import errno  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  from cxr_jax.tools import startup  # pylint: disable=g-import-not-at-top

  class FullDisk:
    def write(self, _):
      raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
      raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
      pass

  startup.log_to_file(str(tmp_path / "train.log"))
  handler = logging.getLogger().handlers[-1]
  try:
    handler.stream = FullDisk()
    for i in range(3):
      logging.getLogger("some.library").error("record %d", i)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("log lines no longer written") == 1 and "No space left" in err
    assert str(tmp_path / "train.log") in err
  finally:
    logging.getLogger().removeHandler(handler)
