"""The suite's own set-up (tests/conftest.py): the tests' programs compile fast, and the
commands they start do not inherit that."""

import os
import subprocess
import sys

from tests.conftest import FAST_COMPILE_FLAGS, compile_this_process_fast


def test_commands_the_tests_start_keep_the_users_xla_flags():
  seen = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('XLA_FLAGS'))"],
                        capture_output=True, text=True, check=True).stdout
  assert FAST_COMPILE_FLAGS not in seen, seen


def test_fast_compiles_restore_the_variable(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  compile_this_process_fast()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
  monkeypatch.delenv("XLA_FLAGS")
  compile_this_process_fast()
  assert "XLA_FLAGS" not in os.environ
