"""Shared fixtures: paths of ../shared and small generated image folders; the session's check
that no test wrote into the checkout."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
CHEST_XRAY = SHARED / "data" / "chest_xray"
FULLRES_SAMPLE = SHARED / "data" / "chest_xray_fullres_sample"
# CXR_DEEP_TESTS=1: the deep variants (more kills, every corruption kind on both configs,
# MobileNetV2 in two processes); README.md, "Tests".
DEEP_TESTS = os.environ.get("CXR_DEEP_TESTS", "") not in ("", "0")
# Ignored folders whose entries are watched too (git shows them as one ignored folder).
WATCHED = ("workdirs", "reports")
# What running Python and pytest leave everywhere.
UNWATCHED = ("__pycache__", ".pytest_cache")


def checkout_paths() -> set[str] | None:
  """Untracked and ignored paths of the checkout, its top-level entries and the entries of
  workdirs/ and reports/ (None outside a git checkout)."""
  try:
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "-z"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  paths = {e[3:].rstrip("/") for e in out.split("\0") if e[:2] in ("??", "!!")}
  paths |= set(os.listdir(REPO))
  for folder in WATCHED:
    if (REPO / folder).is_dir():
      paths |= {f"{folder}/{name}" for name in os.listdir(REPO / folder)}
  return {p for p in paths if not any(part in UNWATCHED for part in p.split("/"))}


# The longest files (each about a third of the suite's work on 2 cores), scheduled first so
# that each worker starts with one and neither waits alone at the end. They share the
# session's debug runs across workers (tests/debug_runs.py).
LONGEST_FILES = ("tests/test_multiprocess.py", "tests/test_fault_injection.py")


def pytest_collection_modifyitems(config, items):
  """Puts LONGEST_FILES first, in that order, for `pytest -n 2 --dist loadfile
  --no-loadscope-reorder` (the Makefile's `test`), which hands out whole files in this
  order. (Not xdist_group marks: pytest-xdist 3.8 appends the group to `item._nodeid`,
  which pytest 9 no longer reads, so `--dist loadgroup` split every file over both workers.)"""
  del config
  def path(item):
    return pathlib.Path(str(item.path)).resolve().relative_to(REPO).as_posix()
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(path(item), len(rank)))  # Stable: the rest keep order.


# Set by pytest_configure for the session: every process of the suite (both pytest-xdist
# workers, every `launch.py` a test starts) reads and writes one XLA compilation cache.
CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


# XLA without its backend optimisation (LLVM at -O0): the same HLO passes, so the same
# computation, compiled about twice as fast. The tests' own programs compile this way by
# default (they check values, not speed); CXR_DEEP_TESTS=1 compiles them with the defaults.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def pytest_configure(config):
  is_worker = hasattr(config, "workerinput")
  if not is_worker:
    _share_one_compilation_cache(config)
  runs_tests = is_worker or not getattr(config.option, "numprocesses", None)
  if runs_tests and not DEEP_TESTS:
    compile_this_process_fast()


def _share_one_compilation_cache(config):
  """One persistent compilation cache for the whole session: the suite compiles the same debug
  programs in many processes, and compiling is most of its time on 2 cores. Made by the
  controlling process before pytest-xdist starts its workers, which inherit the environment;
  a cache the user set is used as it is."""
  if os.environ.get(CACHE_ENV):
    return
  cache = tempfile.mkdtemp(prefix="cxr_jax_tests_xla_cache_")
  os.environ[CACHE_ENV] = cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # Small programs too.
  config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


def compile_this_process_fast():
  """FAST_COMPILE_FLAGS for the programs this process (a process that runs tests) compiles,
  and not for the commands it starts: training, resuming and the two-process runs keep the
  defaults (tests/debug_runs.py says why). XLA reads XLA_FLAGS once, at the first compile,
  so the variable is restored right after it and the commands inherit the user's."""
  import jax  # pylint: disable=import-outside-toplevel
  flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()
  with mock.patch.dict(os.environ, {"XLA_FLAGS": flags}):  # Restores (or removes) it after.
    jax.jit(lambda x: x + 1)(0)


def pytest_sessionstart(session):
  # Paths there before the tests (data/, weights/, a training's workdir) are fine.
  session.config.checkout_before = checkout_paths()


def pytest_sessionfinish(session, exitstatus):
  """Fails the session when a test left anything new in the checkout (tmp_path is for that)."""
  del exitstatus
  before, after = getattr(session.config, "checkout_before", None), checkout_paths()
  if before is None or after is None:
    return
  new = sorted(after - before)
  if new:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = (f"new in the checkout {REPO} since the session began: {new}. Tests write "
               "into tmp_path (and give commands an output or --workdir there); a path "
               "another process made meanwhile shows here too")
    if reporter is not None:
      reporter.ensure_newline()
      reporter.write_line(f"ERROR: {message}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"{path} not found (../shared is not beside this checkout)")
  return path


@pytest.fixture(scope="session")
def chest_xray_dir() -> pathlib.Path:
  return require(CHEST_XRAY)


@pytest.fixture(scope="session")
def fullres_dir() -> pathlib.Path:
  return require(FULLRES_SAMPLE)


def write_image(path: pathlib.Path, seed: int, size=(40, 52), mode="L", fmt=None) -> None:
  """A random image file of the given Pillow mode; `fmt` defaults to the extension's."""
  rng = np.random.default_rng(seed)
  h, w = size
  if mode == "I;16":
    img = Image.fromarray(rng.integers(0, 4096, (h, w), dtype=np.uint16))
  else:
    bands = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode=mode)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path, format=fmt)


def make_class_folder(root: pathlib.Path, n_per_class: int = 4, size=(40, 52)) -> pathlib.Path:
  """root/{NORMAL,PNEUMONIA}/ with Kermany-style names, two images per patient."""
  for label, name in enumerate(("NORMAL", "PNEUMONIA")):
    for i in range(n_per_class):
      patient = 100 + i // 2
      fname = (f"IM-{patient:04d}-{i:04d}.jpeg" if label == 0
               else f"person{patient}_bacteria_{i}.jpeg")
      write_image(root / name / fname, seed=label * 1000 + i, size=size)
  return root


@pytest.fixture
def class_folder(tmp_path) -> pathlib.Path:
  return make_class_folder(tmp_path / "folder")


@pytest.fixture(scope="session")
def debug_runs(tmp_path_factory, worker_id):
  """The uninterrupted debug run of each config (tests/debug_runs.py), made once for the
  session: under pytest-xdist in the folder its workers share (basetemp's parent)."""
  require(CHEST_XRAY)
  from tests import debug_runs as runs  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent
  return runs.DebugRuns(root / "debug_runs")
