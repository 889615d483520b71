import os
import re
import subprocess
import sys

import pytest

from cxr_jax.tools import malloc_tuning as mt

from tests.conftest import REPO
OURS = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:" \
       "glibc.malloc.trim_threshold=4294967296"


def test_tunables_added_and_user_settings_win():
  assert mt.tunables_value("") == OURS
  assert mt.tunables_value("glibc.malloc.hugetlb=0") == (
      "glibc.malloc.hugetlb=0:glibc.malloc.mmap_threshold=4294967296:"
      "glibc.malloc.trim_threshold=4294967296")
  assert mt.tunables_value(OURS) == OURS  # complete: nothing to add, so no re-exec loop


def test_needs_reexec_only_on_linux_glibc_without_the_settings():
  assert mt.needs_reexec({}, "linux", "glibc")
  assert not mt.needs_reexec({"GLIBC_TUNABLES": OURS}, "linux", "glibc")
  assert not mt.needs_reexec({}, "darwin", "")
  assert not mt.needs_reexec({}, "linux", "musl")
  assert not mt.needs_reexec({mt.OPT_OUT_VARIABLE: "0"}, "linux", "glibc")


def test_makefile_exports_the_same_settings():
  makefile = (REPO / "Makefile").read_text()
  assert re.search(r"^export GLIBC_TUNABLES \?= (\S+)$", makefile, re.M).group(1) == OURS


@pytest.mark.skipif(not mt.needs_reexec({}), reason="not Linux with glibc")
def test_reexec_restarts_the_command_once_with_the_settings():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", mt.OPT_OUT_VARIABLE)}
  code = ("import os; print('run', flush=True); from cxr_jax.tools import malloc_tuning as mt; "
          "mt.reexec_with_tunables(); print(os.environ['GLIBC_TUNABLES'])")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True).stdout.split()
  assert out == ["run", "run", OURS]  # the first run re-executed, the second went on
  env[mt.OPT_OUT_VARIABLE] = "0"
  code = ("import os; from cxr_jax.tools import malloc_tuning as mt; mt.reexec_with_tunables(); "
          "print(os.environ.get('GLIBC_TUNABLES', 'unset'))")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, check=True).stdout.split()
  assert out == ["unset"]


def test_prepare_main_acts_only_in_the_program_itself(monkeypatch):
  calls = []
  monkeypatch.setattr(mt, "prepare_process", lambda: calls.append(1))
  mt.prepare_main("cxr_jax.tools.evaluate")  # Imported: a test, another module.
  assert calls == []
  mt.prepare_main("__main__")
  assert calls == [1]


def test_every_entry_point_starts_with_the_one_preamble():
  import ast  # pylint: disable=g-import-not-at-top
  # The commands that start through startup.run (browser_check only drives a browser).
  tools = sorted((REPO / "cxr_jax" / "tools").glob("*.py")) + sorted(
      (REPO / "cxr_lab" / "tools").glob("*.py"))
  entry_points = [p for p in tools if "from cxr_jax.tools import startup" in p.read_text()] + [
      REPO / "launch.py"]
  assert len(entry_points) > 18
  for path in entry_points:
    name = str(path.relative_to(REPO))
    body = ast.parse(path.read_text()).body
    first, second = (ast.unparse(node) for node in body[1:3])  # After the docstring.
    assert (first, second) == ("from cxr_jax.tools import malloc_tuning",
                               "malloc_tuning.prepare_main(__name__)"), name
    assert "prepare_process()" not in path.read_text(), name
