"""Fault injection: kill -9 anywhere, disk full, corrupted checkpoints; each followed by a rerun
that must reach the uninterrupted run's result bit for bit.

The kill points are `cxr_jax.runtime.faults.point()` calls (every train step, before and after
each resume point is written, each phase start), some with a random delay so that the
kill lands inside the next operation (a checkpoint write, say). FAULT_KILLS (env, default
4 per config here; the closing note quotes 20) sets how many kills each config takes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from cxr_jax import checkpoints
from cxr_jax.runtime import faults
from cxr_jax import workdir as workdir_lib
from tests.conftest import CHEST_XRAY, REPO, require

KILLS = int(os.environ.get("FAULT_KILLS", "4"))
CONFIGS = ("configs/cnn_v3.py:debug", "configs/mobilenet.py:debug")
TIMING_KEYS = ("seconds", "train_seconds")


def launch(config: str, workdir: str, cache: str, kill_at: int | None = None,
           delay: float = 0.0, points_file: str | None = None) -> subprocess.CompletedProcess:
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


def outcome(workdir: str) -> dict:
  """Everything a finished run leaves that must not depend on where it was stopped."""
  best, record = checkpoints.restore_best(workdir)
  history = json.load(open(os.path.join(workdir, "history.json")))
  summary = json.load(open(os.path.join(workdir, "train_summary.json")))
  strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}
  return {"best": best, "record": record, "history": [strip(h) for h in history],
          "summary": strip(summary)}


def assert_same(a: dict, b: dict) -> None:
  leaves_a, leaves_b = (sorted(_flat(x["best"]).items()) for x in (a, b))
  assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
  for (name, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=name)  # Bit for bit.
  for key in ("record", "history", "summary"):
    assert a[key] == b[key], key


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  require(CHEST_XRAY)
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module", params=CONFIGS)
def reference(request, tmp_path_factory, cache):
  root = tmp_path_factory.mktemp("reference")
  points = str(root / "points.txt")
  proc = launch(request.param, str(root / "run"), cache, points_file=points)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return request.param, outcome(str(root / "run")), open(points).read().split()


def test_kill_9_anywhere_resumes_to_the_same_result(reference, cache, tmp_path):
  config, expected, points = reference
  assert {"step", "before_checkpoint", "after_checkpoint"} <= set(points)
  rng = random.Random(f"{config}:{KILLS}")
  kills, chains = 0, 0
  while kills < KILLS:
    workdir = str(tmp_path / f"chain{chains}")
    chains += 1
    left_holder = False
    for _ in range(100):  # Kill, rerun, kill... until a run finishes.
      kill_at = rng.randint(1, len(points))
      delay = rng.choice([0.0, 0.0, 0.02, 0.1, 0.3])
      proc = launch(config, workdir, cache, kill_at if kills < KILLS else None, delay)
      if left_holder:  # The killed run's lock, released by the kernel, is taken over.
        assert "Taking over the lock" in proc.stderr, proc.stderr[-3000:]
      if proc.returncode == -signal.SIGKILL:
        kills += 1
        left_holder = bool(open(os.path.join(workdir, workdir_lib.LOCK_FILE)).read().strip())
        continue
      assert proc.returncode == 0, proc.stderr[-3000:]
      assert "Traceback" not in proc.stderr
      break
    assert_same(outcome(workdir), expected)
  print(f"{config}: {kills} kills over {chains} chains, every chain resumed to the "
        "uninterrupted result bit for bit.")


def _corrupt(step_dir: str, how: str) -> None:
  if how == "truncated meta":
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
      f.write('{"truncated": ')  # Half a JSON file.
  elif how == "truncated _METADATA":
    path = os.path.join(step_dir, "best", "_METADATA")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
  else:  # "missing data": the arrays' files are gone.
    for root, _, files in os.walk(os.path.join(step_dir, "best")):
      for name in files:
        if os.sep + "d" in root:
          os.remove(os.path.join(root, name))


@pytest.mark.parametrize("how", ["truncated meta", "truncated _METADATA", "missing data"])
def test_corrupted_newest_checkpoint_is_set_aside_and_the_run_redone(reference, cache,
                                                                      tmp_path, how):
  config, expected, points = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(_finished_copy(config, cache, tmp_path.parent), workdir)
  run_dir = os.path.join(workdir, "checkpoints", "run")
  newest = max(int(s) for s in os.listdir(run_dir) if s.isdigit())
  _corrupt(os.path.join(run_dir, str(newest)), how)
  os.remove(os.path.join(workdir, "train_summary.json"))  # As if stopped before the end.
  # Evaluating it says which checkpoint is bad, in one line, without a traceback.
  proc = subprocess.run([sys.executable, "-m", "cxr_jax.tools.evaluate", f"--workdir={workdir}",
                         f"--data_dir={CHEST_XRAY / 'test'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert f"run/{newest} is unreadable" in proc.stderr
  proc = launch(config, workdir, cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", f"corrupt-{newest}"))  # Kept.
  assert_same(outcome(workdir), expected)


_FINISHED: dict = {}


def _finished_copy(config, cache, root) -> str:
  """A finished run of `config` (made once per config)."""
  if config not in _FINISHED:
    workdir = str(root / f"finished_{len(_FINISHED)}")
    proc = launch(config, workdir, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _FINISHED[config] = workdir
  return _FINISHED[config]


def test_disk_full_stops_cleanly_and_resumes(cache, tmp_path):
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("needs root to mount a small tmpfs")
  config = CONFIGS[0]
  reference_dir = str(tmp_path / "reference")
  assert launch(config, reference_dir, cache).returncode == 0
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("mount -t tmpfs not permitted here")
  try:
    workdir = str(mount / "run")
    proc = launch(config, workdir, cache)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
    proc = launch(config, workdir, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(outcome(workdir), outcome(reference_dir))
  finally:
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)
