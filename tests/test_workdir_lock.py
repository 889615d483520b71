"""One writer per workdir: a second writer is refused before any work, naming the holder; a
killed holder's lock is taken over with a log line; readers never take it.

The holders are real processes (`start_holder`: the lock API in a subprocess, holding until
its stdin closes or it is killed); the second writers are this process and the commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from configs import cnn_v3
from cxr_jax import data as data_lib
from cxr_jax import export
from cxr_jax import report
from cxr_lab import sweep
from cxr_jax import train
from cxr_jax import workdir as workdir_lib
from cxr_jax import evaluate
from cxr_jax import predict
from tests.conftest import CHEST_XRAY, REPO, require

HOLDER = """
import contextlib, sys
from cxr_jax import workdir
with contextlib.ExitStack() as stack:
  for folder in sys.argv[2:]:
    stack.enter_context(workdir.writer_lock(folder, command=sys.argv[1]))
  print("held", flush=True)
  sys.stdin.read()  # Until the test closes stdin, or kills this process.
"""
# A second writer in its own process: logs to stderr, says when it holds the lock.
WRITER = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from cxr_jax import workdir
with workdir.writer_lock(sys.argv[1]):
  print("acquired", flush=True)
"""
COMMAND = "holder-of-the-test --workdir=w"


def _env() -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop(workdir_lib.LOCK_WAIT_VARIABLE, None)
  return env


def start_holder(*folders) -> subprocess.Popen:
  """A process holding the lock of every folder (stdin closed: it releases and exits)."""
  log = tempfile.TemporaryFile("w+")  # Not a pipe: nobody reads it while the holder waits.
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, COMMAND, *map(str, folders)],
                          cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=log, text=True)
  if proc.stdout.readline().strip() != "held":
    proc.wait(timeout=60)
    log.seek(0)
    raise AssertionError(f"the holder did not take the lock: {log.read()[-2000:]}")
  return proc


def stop_holder(proc: subprocess.Popen) -> None:
  proc.stdin.close()
  assert proc.wait(timeout=60) == 0


def _tree(root) -> dict:
  out = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      st = os.lstat(os.path.join(folder, name))
      out[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
  return out


def _config():
  config = cnn_v3.get_config("debug")
  config.data.data_dir = str(CHEST_XRAY)
  config.data.source = "folder"
  return config


@pytest.fixture(scope="module")
def held(tmp_path_factory):
  """(holder process, workdir W with a config.json, folder R, sweep root S) held by it."""
  root = tmp_path_factory.mktemp("held")
  w, r, s = root / "w", root / "r", root / "s"
  w.mkdir()
  workdir_lib.save_config(str(w), _config())
  proc = start_holder(w, r, s / "x" / "seed_0")
  yield proc, str(w), str(r), str(s)
  stop_holder(proc)


def _assert_names_the_holder(message: str, proc) -> None:
  assert "\n" not in message, message
  for part in (f"pid {proc.pid}", socket.gethostname(), COMMAND, f"kill {proc.pid}",
               workdir_lib.LOCK_WAIT_VARIABLE):
    assert part in message, (part, message)


def test_a_second_writer_is_refused_every_time(held):
  proc, w, r, _ = held
  before = _tree(w)
  for attempt in range(20):
    for folder in (w, r):
      with pytest.raises(workdir_lib.WorkdirBusyError) as error:
        with workdir_lib.writer_lock(folder):
          pytest.fail(f"attempt {attempt}: {folder} was taken while held")
      _assert_names_the_holder(str(error.value), proc)
  assert _tree(w) == before


def test_a_waiting_writer_gives_up_after_its_wait(held, monkeypatch):
  proc, w, _, _ = held
  monkeypatch.setenv(workdir_lib.LOCK_WAIT_VARIABLE, "1")
  start = time.time()
  with pytest.raises(workdir_lib.WorkdirBusyError, match="still held after 1s"):
    with workdir_lib.writer_lock(w):
      pass
  assert time.time() - start >= 1.0
  monkeypatch.setenv(workdir_lib.LOCK_WAIT_VARIABLE, "soon")
  with pytest.raises(ValueError, match="is not a number of seconds"):
    with workdir_lib.writer_lock(w):
      pass


def _writers(w: str, r: str, s: str, monkeypatch) -> dict:
  """Every library writer, each aimed at a held folder; nothing may be read before the lock."""
  def no_work(*args, **kwargs):
    raise AssertionError("work started before the lock was taken")
  for module, name in ((data_lib, "load_train_val"), (data_lib, "load"),
                       (evaluate, "evaluate_folder"), (export.registry, "load_predictor"),
                       (report.collect, "collect_all")):
    monkeypatch.setattr(module, name, no_work)
  monkeypatch.setattr(train.ensemble, "check_members", lambda *args: None)
  return {
      "train": lambda: train.train_and_evaluate(_config(), w),
      "evaluate into the workdir": lambda: evaluate.evaluate_to_file(
          w, str(CHEST_XRAY / "test"), os.path.join(w, "eval_test.json")),
      "export into the workdir": lambda: export.export_workdir(w, os.path.join(w, "export")),
      "ensemble": lambda: train.create_ensemble(w, [w, w]),
      "report folder": lambda: report.build_report([], r),
      "sweep root": lambda: sweep.run_sweep({"x": _config()}, [0], r, no_work),
      "sweep run": lambda: sweep.run_sweep({"x": _config()}, [0], s, no_work),
  }


def test_every_writer_is_refused_before_any_work(held, monkeypatch):
  require(CHEST_XRAY)
  proc, w, r, s = held
  seed_dir = os.path.join(s, "x", "seed_0")
  before = {folder: _tree(folder) for folder in (w, r, seed_dir)}
  for name, call in _writers(w, r, s, monkeypatch).items():
    with pytest.raises(workdir_lib.WorkdirBusyError) as error:
      call()
    _assert_names_the_holder(str(error.value), proc)
    assert {folder: _tree(folder) for folder in before} == before, name
  assert not os.path.exists(os.path.join(s, sweep.SWEEP_FILE))


def test_launch_is_refused_in_one_line_naming_the_holder(held):
  require(CHEST_XRAY)
  proc, w, _, _ = held
  before = _tree(w)
  run = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/cnn_v3.py:debug", f"--workdir={w}",
       "--config.data.source=folder", f"--config.data.data_dir={CHEST_XRAY}"],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "WorkdirBusyError" in errors[0], run.stderr[-2000:]
  _assert_names_the_holder(errors[0], proc)
  assert _tree(w) == before  # No train.log, no command.json.


def test_readers_never_take_the_lock(held, monkeypatch, tmp_path):
  _, w, _, _ = held
  def no_lock(*args, **kwargs):
    raise AssertionError("a reader took the writer lock")
  monkeypatch.setattr(workdir_lib, "writer_lock", no_lock)
  image = tmp_path / "a.png"
  from PIL import Image  # pylint: disable=C0415
  Image.new("L", (40, 40)).save(image)
  # Past the lock held by the holder, to where W (no model) stops it.
  with pytest.raises(FileNotFoundError, match="No checkpoint under"):
    predict.predict_files(w, [str(image)], str(tmp_path / "p.csv"))


def test_kill_9_of_the_holder_then_the_next_writer_takes_over(tmp_path, caplog):
  folder = str(tmp_path / "w")
  for _ in range(2):
    proc = start_holder(folder)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    record = open(os.path.join(folder, workdir_lib.LOCK_FILE)).read()
    assert f'"pid": {proc.pid}' in record  # Left behind: nothing released it but the kernel.
    run = subprocess.run([sys.executable, "-c", WRITER, folder], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "acquired" in run.stdout, run.stderr[-2000:]
    takeover = [line for line in run.stderr.splitlines() if "Taking over the lock" in line]
    assert len(takeover) == 1, run.stderr[-2000:]
    assert f"pid {proc.pid}" in takeover[0] and "no longer running" in takeover[0]
  # That writer exited cleanly: the next one finds no holder to take over from.
  with caplog.at_level(logging.WARNING):
    with workdir_lib.writer_lock(folder):
      pass
  assert "Taking over" not in caplog.text
  assert open(os.path.join(folder, workdir_lib.LOCK_FILE)).read() == ""


def test_the_lock_is_reentrant_within_a_process(tmp_path):
  folder = str(tmp_path / "w")
  with workdir_lib.writer_lock(folder, command="outer"):
    with workdir_lib.writer_lock(folder):
      pass
    assert '"command": "outer"' in open(os.path.join(folder, workdir_lib.LOCK_FILE)).read()
  with contextlib.ExitStack() as stack:  # Released: taken again at once.
    stack.enter_context(workdir_lib.writer_lock(folder))
