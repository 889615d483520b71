"""Debug-sized training runs through `launch.py`, and the uninterrupted run of each config
made once per session (the `debug_runs` fixture of tests/conftest.py). test_fault_injection
resumes against it, test_multiprocess compares two processes with it, and test_train and
test_export read its workdir. Whichever pytest-xdist worker asks first makes it, under a
file lock that the other waits on.

Their XLA flags are the default: with the backend optimisation off
(--xla_backend_optimization_level=0) a cnn_v3 debug run takes 19 s instead of 31 s, but its
one- and two-process runs then differ by 3% in the second epoch's loss (Adam makes a step
of any rounding of a near-zero gradient), past test_multiprocess's tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import filelock

from cxr_jax.runtime import faults
from tests.conftest import CHEST_XRAY, REPO

# cnn_v2: the BatchNorm CNN that compiles fastest (a debug run from cold 21 s, two processes
# 35 s; cnn_v3's 29 s and 42 s, 2-core Zen 4), and the two-phase MobileNetV2.
CNN_DEBUG, MOBILENET_DEBUG = CONFIGS = ("configs/cnn_v2.py:debug", "configs/mobilenet.py:debug")


def launch(config: str, workdir: str, kill_at: int | None = None, delay: float = 0.0,
           points_file: str | None = None) -> subprocess.CompletedProcess:
  """One process of `launch.py` on ../shared's subset; it inherits the session's compilation
  cache (tests/conftest.py)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
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
  """runs.get(config): the uninterrupted run of `config`, made on first use in `root`
  (shared by the processes of one session)."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    root.mkdir(parents=True, exist_ok=True)

  def get(self, config: str) -> Run:
    folder = self.root / config.replace("/", "_").replace(":", "_")
    record = folder / "run.json"
    with filelock.FileLock(f"{folder}.lock"):
      if not record.exists():
        shutil.rmtree(folder, ignore_errors=True)  # What a maker that failed left.
        folder.mkdir()
        points, workdir = str(folder / "points.txt"), str(folder / "run")
        start = time.time()
        proc = launch(config, workdir, points_file=points)
        seconds = time.time() - start
        assert proc.returncode == 0, proc.stderr[-3000:]
        made = Run(workdir, open(points).read().split(), seconds)
        record.write_text(json.dumps(dataclasses.asdict(made)))
    return Run(**json.loads(record.read_text()))
