"""Debug-sized training runs through `launch.py`, and the uninterrupted run of each config
made once per session (the `debug_runs` fixture of tests/conftest.py): test_fault_injection
resumes against it and test_multiprocess compares two processes with it. Under
pytest-xdist both files are in one group (tests/conftest.py), so one worker makes each run
once for both.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time

from cxr_jax.runtime import faults
from tests.conftest import CHEST_XRAY, REPO

CONFIGS = ("configs/cnn_v3.py:debug", "configs/mobilenet.py:debug")


def launch(config: str, workdir: str, cache: str, kill_at: int | None = None,
           delay: float = 0.0, points_file: str | None = None) -> subprocess.CompletedProcess:
  """One process of `launch.py` on ../shared's subset, with a persistent compilation cache."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
  for key in (faults.KILL_AT, faults.KILL_DELAY, faults.POINTS_FILE):
    env.pop(key, None)
  if kill_at is not None:
    env[faults.KILL_AT], env[faults.KILL_DELAY] = str(kill_at), str(delay)
  if points_file:
    env[faults.POINTS_FILE] = points_file
  return subprocess.run(
      [sys.executable, "launch.py", f"--config={config}", f"--workdir={workdir}",
       f"--config.data.data_dir={CHEST_XRAY}", "--config.data.source=folder"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: str  # Only read by the tests: copy it (shutil.copytree) to change it.
  points: list[str]  # The fault points it passed, in order (kill -9 targets).
  seconds: float  # Wall time of the command (start-up and compiles included).


class DebugRuns:
  """runs.get(config): the uninterrupted run of `config`, made on first use."""

  def __init__(self, root: pathlib.Path, cache: str):
    self.root, self.cache, self._made = root, cache, {}

  def get(self, config: str) -> Run:
    if config not in self._made:
      root = self.root / f"run{len(self._made)}"
      root.mkdir(parents=True)
      points, workdir = str(root / "points.txt"), str(root / "run")
      start = time.time()
      proc = launch(config, workdir, self.cache, points_file=points)
      seconds = time.time() - start
      assert proc.returncode == 0, proc.stderr[-3000:]
      self._made[config] = Run(workdir, open(points).read().split(), seconds)
    return self._made[config]
