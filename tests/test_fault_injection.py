"""Fault injection: kill -9 anywhere, disk full, corrupted checkpoints; each followed by a rerun
that must reach the uninterrupted run's result bit for bit.

The kill points are `cxr_jax.runtime.faults.point()` calls (every train step, before and after
each resume point is written, each phase start), some with a random delay so that the
kill lands inside the next operation (a checkpoint write, say). FAULT_KILLS (env) sets how
many kills each config takes: 1 by default, 4 with CXR_DEEP_TESTS=1 (README quotes 20).
Every corruption kind is checked by default, each on one config (the kinds alternate
between them); CXR_DEEP_TESTS=1 checks every kind on both. Each config's uninterrupted run
is made once and copied wherever a test needs a finished run.
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
from cxr_jax import workdir as workdir_lib
from tests.conftest import CHEST_XRAY, DEEP_TESTS, REPO
from tests.debug_runs import CONFIGS, launch

KILLS = int(os.environ.get("FAULT_KILLS", "4" if DEEP_TESTS else "1"))
CORRUPTIONS = ("truncated meta", "truncated _METADATA", "missing data")
# Each kind once by default (cnn_v2, MobileNetV2, cnn_v2); every kind on both when deep.
CORRUPTION_CASES = ([(c, how) for c in CONFIGS for how in CORRUPTIONS] if DEEP_TESTS else
                    [(CONFIGS[i % len(CONFIGS)], how) for i, how in enumerate(CORRUPTIONS)])
TIMING_KEYS = ("seconds", "train_seconds")


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
def references(debug_runs):
  """references(config) -> (its uninterrupted run's workdir, outcome, kill points); the
  workdir is the session's (tests/debug_runs.py), only read: copy it to change it."""
  outcomes = {}

  def get(config):
    run = debug_runs.get(config)
    if config not in outcomes:
      outcomes[config] = outcome(run.workdir)
    return run.workdir, outcomes[config], run.points
  return get


@pytest.mark.parametrize("config", CONFIGS)
def test_kill_9_anywhere_resumes_to_the_same_result(config, references, tmp_path):
  _, expected, points = references(config)
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
      proc = launch(config, workdir, kill_at if kills < KILLS else None, delay)
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


@pytest.mark.parametrize("config, how", CORRUPTION_CASES)
def test_corrupted_newest_checkpoint_is_set_aside_and_the_run_redone(config, how, references,
                                                                      tmp_path):
  finished, expected, _ = references(config)
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
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
  proc = launch(config, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", f"corrupt-{newest}"))  # Kept.
  assert_same(outcome(workdir), expected)


def test_disk_full_stops_cleanly_and_resumes(references, tmp_path):
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("needs root to mount a small tmpfs")
  config = CONFIGS[0]
  _, expected, _ = references(config)
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("mount -t tmpfs not permitted here")
  try:
    workdir = str(mount / "run")
    proc = launch(config, workdir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
    proc = launch(config, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(outcome(workdir), expected)
  finally:
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)
