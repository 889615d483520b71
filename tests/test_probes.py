"""A careless user's probes: every bad setting or file gets a one-line error naming the key or
file (or a counted, listed skip), never a traceback, a silent wrong answer or lost files.

PROBES are checked in process (the library raises the error the command prints);
CLI_PROBES run the commands and check what a user sees: exit 1, one `error:` line, no
traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from configs import cnn_v3, mobilenet, pca_logreg
from cxr_jax import config_checks
from cxr_jax import data as data_lib
from cxr_jax import export
from cxr_jax import report
from cxr_jax import train
from cxr_jax import workdir as workdir_lib
from cxr_jax import evaluate
from cxr_jax import predict
from cxr_jax.report import collect
from tests.conftest import CHEST_XRAY, REPO, make_class_folder, require
from tests.debug_runs import CNN_DEBUG


def _debug(module, changes: dict):
  """The module's debug config on the shared data, with dotted keys (`phases[1].x` too) set."""
  config = module.get_config("debug")
  config.data.data_dir = str(CHEST_XRAY)
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node.phases[int(part[7:-1])] if part.startswith("phases[") else node[part]
    node[leaf] = value
  return config


def _cnn(**changes):
  return _debug(cnn_v3, changes)


def _mobilenet(**changes):
  return _debug(mobilenet, changes)


def _pca(**changes):
  return _debug(pca_logreg, changes)


# (probe, the config, what the error names).
CONFIG_PROBES = [
    ("batch_size=0", lambda: _cnn(batch_size=0), "config.batch_size=0"),
    ("eval_batch_size=0", lambda: _cnn(eval_batch_size=0), "config.eval_batch_size=0"),
    ("image_size=0", lambda: _cnn(**{"data.image_size": 0}), "config.data.image_size=0"),
    ("image_size=16", lambda: _cnn(**{"data.image_size": 16}), "config.data.image_size=16"),
    ("num_epochs=0", lambda: _cnn(num_epochs=0), "config.num_epochs=0"),
    ("negative learning rate", lambda: _cnn(learning_rate=-1e-3), "config.learning_rate"),
    ("huge learning rate", lambda: _cnn(learning_rate=1e6), "config.learning_rate"),
    ("negative weight decay", lambda: _cnn(weight_decay=-1.0), "config.weight_decay"),
    ("negative warmup", lambda: _cnn(warmup_epochs=-1.0), "config.warmup_epochs"),
    ("class_weight=inverse", lambda: _cnn(class_weight="inverse"), "config.class_weight"),
    ("patience=0", lambda: _cnn(early_stopping_patience=0), "config.early_stopping_patience"),
    ("selection by accuracy", lambda: _cnn(selection_metric="accuracy"),
     "config.selection_metric"),
    ("label_smoothing=0.7", lambda: _cnn(label_smoothing=0.7), "config.label_smoothing"),
    ("mixup_prob=2", lambda: _cnn(mixup_prob=2.0), "config.mixup_prob"),
    ("ema_decay=1", lambda: _cnn(ema_decay=1.0), "config.ema_decay"),
    ("val_fraction=0", lambda: _cnn(**{"data.val_fraction": 0.0}), "config.data.val_fraction"),
    ("val_fraction=1", lambda: _cnn(**{"data.val_fraction": 1.0}), "config.data.val_fraction"),
    ("channels=2", lambda: _cnn(**{"data.channels": 2}), "config.data.channels"),
    ("source=s3", lambda: _cnn(**{"data.source": "s3"}), "config.data.source"),
    ("missing data_dir", lambda: _cnn(**{"data.data_dir": "/no/such/chest_xray"}),
     "config.data.data_dir='/no/such/chest_xray' does not exist"),
    ("data_dir without train/", lambda: _cnn(**{"data.data_dir": str(REPO / "configs")}),
     "has no train/ folder"),
    ("max_images_per_class=-1", lambda: _cnn(**{"data.max_images_per_class": -1}),
     "config.data.max_images_per_class"),
    ("min_image_side=0", lambda: _cnn(**{"data.min_image_side": 0}),
     "config.data.min_image_side"),
    ("crop_border=0.6", lambda: _cnn(**{"data.crop_border": 0.6}), "config.data.crop_border"),
    ("rotation 720 degrees", lambda: _cnn(**{"augment.rotation_degrees": 720.0}),
     "config.augment.rotation_degrees"),
    ("gamma below 1", lambda: _cnn(**{"augment.gamma": 0.5}), "config.augment.gamma"),
    ("blur sigma 5 px", lambda: _cnn(**{"augment.blur_sigma": 5.0}), "config.augment.blur_sigma"),
    ("unknown model", lambda: _cnn(**{"model.name": "resnet9000"}), "config.model.name"),
    ("unknown ops policy", lambda: _cnn(**{"model.ops": "fast"}), "config.model.ops"),
    ("missing weights file", lambda: _mobilenet(**{"model.weights": "/no/such.h5"}),
     "config.model.weights='/no/such.h5'"),
    ("alpha=0", lambda: _mobilenet(**{"model.alpha": 0.0}), "config.model.alpha"),
    ("trainable='some'", lambda: _mobilenet(**{"phases[1].trainable": "some"}),
     "config.phases[1].trainable"),
    ("phase learning rate 0", lambda: _mobilenet(**{"phases[1].learning_rate": 0.0}),
     "config.phases[1].learning_rate"),
    ("phase learning rate 1e6", lambda: _mobilenet(**{"phases[1].learning_rate": 1e6}),
     "config.phases[1].learning_rate"),
    ("cached features of a trained backbone",
     lambda: _mobilenet(**{"phases[0].trainable": "all"}), "config.phases[0].cached_features"),
    ("operating_point='best'", lambda: _cnn(operating_point="best"), "config.operating_point"),
    ("ood.kind='energy'", lambda: _cnn(**{"ood.kind": "energy"}), "config.ood.kind"),
    ("ood.accept=0.3", lambda: _cnn(**{"ood.accept": 0.3}), "config.ood.accept"),
    ("pca n_components=0", lambda: _pca(**{"model.n_components": 0}),
     "config.model.n_components"),
    ("pca empty c_grid", lambda: _pca(**{"model.c_grid": ()}), "config.model.c_grid"),
]


@pytest.mark.parametrize("name, make, expected", CONFIG_PROBES,
                         ids=[p[0] for p in CONFIG_PROBES])
def test_bad_setting_is_refused_before_any_data_is_read(name, make, expected, monkeypatch,
                                                        tmp_path):
  require(CHEST_XRAY)
  def no_data(*args, **kwargs):
    raise AssertionError(f"{name}: data was read before the config was checked")
  monkeypatch.setattr(data_lib, "load_train_val", no_data)
  with pytest.raises(config_checks.ConfigError) as error:
    train.train_and_evaluate(make(), str(tmp_path / "w"))
  message = str(error.value)
  assert expected in message and "\n" not in message, message
  assert not os.path.exists(tmp_path / "w")  # Nothing created either, not even the folder.


def test_other_config_for_a_workdir_is_refused_naming_the_keys(tmp_path):
  require(CHEST_XRAY)
  workdir = str(tmp_path / "w")
  config = _cnn()
  config.data.source = "folder"
  os.makedirs(workdir)
  workdir_lib.save_config(workdir, config)
  other = _cnn(**{"data.image_size": 48})
  other.data.source = "folder"
  with pytest.raises(train.ConfigChangedError, match=r"data.image_size: 64 -> 48"):
    train.train_and_evaluate(other, workdir)
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["image_size"] == 64


def test_truncated_config_json_names_the_file(tmp_path):
  (tmp_path / "config.json").write_text('{"data": ')
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    workdir_lib.load_config(str(tmp_path))


def test_unusable_files_are_counted_listed_and_dicom_is_used(tmp_path):
  folder = make_class_folder(tmp_path / "f", n_per_class=3, size=(60, 60))
  Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "NORMAL" / "IM-0900-0001.png")
  os.symlink("loop_b", folder / "NORMAL" / "loop_a.jpeg")
  os.symlink("loop_a.jpeg", folder / "NORMAL" / "loop_b")
  os.symlink(str(tmp_path / "gone.jpeg"), folder / "PNEUMONIA" / "person9_virus_9.jpeg")
  from tests.test_predict import write_dicom  # pylint: disable=C0415
  write_dicom(folder / "PNEUMONIA" / "person8_virus_8.dcm",
              np.random.default_rng(0).integers(0, 256, (70, 70), dtype=np.uint8))
  data = data_lib.load_folder(str(folder), data_lib.Preprocess(32, 1, min_side=32))
  reasons = {os.path.basename(s["path"]): s["reason"] for s in data.skipped}
  assert "smaller than the minimum side" in reasons["IM-0900-0001.png"]
  assert "symbolic links" in reasons["loop_a.jpeg"] and "cannot read" in reasons["loop_b"]
  assert "No such file" in reasons["person9_virus_9.jpeg"]
  assert len(data) == 7 and "person8_virus_8.dcm" in {os.path.basename(p) for p in data.paths}


def test_evaluate_refuses_a_folder_that_is_not_a_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a cxr_jax training workdir"):
    evaluate.evaluate_folder(str(tmp_path), str(tmp_path))


def test_predict_without_images_says_so(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("not an image, not searched")
  with pytest.raises(ValueError, match="No image files found"):
    predict.predict_files(str(tmp_path), [str(tmp_path / "empty")], str(tmp_path / "p.csv"))


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# "{tmp}": the test's tmp_path, holding w/ (a workdir's config.json, nothing trained) and
# in/a.png; "{data}": the shared chest_xray folder. Every command writes into tmp_path only.
CLI_PROBES = [
    ("launch batch_size=0", ["launch.py", "--config=configs/cnn_v3.py:debug",
                             "--config.batch_size=0", "--workdir={tmp}/new"],
     "config.batch_size=0"),
    ("launch missing data_dir", ["launch.py", "--config=configs/cnn_v3.py:debug",
                                 "--config.data.data_dir=/no/such", "--workdir={tmp}/new"],
     "config.data.data_dir"),
    ("launch negative learning rate", ["launch.py", "--config=configs/cnn_v3.py:debug",
                                       "--config.learning_rate=-0.001", "--workdir={tmp}/new"],
     "config.learning_rate"),
    ("launch into a read-only place", ["launch.py", "--config=configs/cnn_v3.py:debug",
                                       "--config.data.source=folder",
                                       "--config.data.data_dir={data}",
                                       "--workdir=/proc/cxr_jax/w"],
     "Cannot write into /proc/cxr_jax/w"),
    ("evaluate a non-workdir", ["-m", "cxr_jax.tools.evaluate", "--workdir={tmp}"],
     "is not a cxr_jax training workdir"),
    ("predict a missing workdir", ["-m", "cxr_jax.tools.predict", "--workdir=/no/such/w",
                                   "{tmp}/in/a.png", "--output={tmp}/p.csv"], "/no/such/w"),
    ("predict onto an input image", ["-m", "cxr_jax.tools.predict", "--workdir={tmp}/w",
                                     "{tmp}/in", "--output={tmp}/in/a.png"],
     "--output={tmp}/in/a.png is also an input"),
    ("predict onto the data folder", ["-m", "cxr_jax.tools.predict", "--workdir={tmp}/w",
                                      "{tmp}/in", "--output={tmp}/in"],
     "--output={tmp}/in is also an input"),
    ("predict into a read-only place", ["-m", "cxr_jax.tools.predict", "--workdir={tmp}/w",
                                        "{tmp}/in", "--output=/proc/cxr_jax/p.csv"],
     "Cannot write /proc/cxr_jax/p.csv"),
    ("export into the checkpoints", ["-m", "cxr_jax.tools.export", "--workdir={tmp}/w",
                                     "--output_dir={tmp}/w/checkpoints"],
     "is checkpoints of the workdir"),
    ("report a missing config", ["-m", "cxr_jax.tools.report", "--configs=configs/nope.py",
                                 "--output={tmp}/report"], "configs/nope.py"),
    ("report onto a workdir", ["-m", "cxr_jax.tools.report", "--workdirs={tmp}",
                               "--configs=configs/cnn_v3.py", "--output={tmp}/w"],
     "--output={tmp}/w is a training workdir"),
]


def _probe_folder(tmp_path) -> None:
  """tmp_path/w: a workdir's config.json (nothing trained); tmp_path/in/a.png: an input."""
  (tmp_path / "w").mkdir()
  workdir_lib.save_config(str(tmp_path / "w"), cnn_v3.get_config("debug"))
  (tmp_path / "in").mkdir()
  Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "in" / "a.png")


def _tree(root) -> dict:
  """Every path under root with its size and modification time."""
  out = {}
  for folder, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(folder, name)
      st = os.lstat(path)
      out[path] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.mark.parametrize("name, args, expected", CLI_PROBES, ids=[p[0] for p in CLI_PROBES])
def test_commands_print_one_line_errors(name, args, expected, tmp_path):
  if any("{data}" in a for a in args):
    require(CHEST_XRAY)
  _probe_folder(tmp_path)
  before = _tree(tmp_path)
  fill = lambda text: text.format(tmp=tmp_path, data=CHEST_XRAY)
  proc = _run(*map(fill, args))
  assert proc.returncode == 1, (name, proc.stderr[-2000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and fill(expected) in errors[0], proc.stderr[-2000:]
  assert "--verbose" in proc.stderr
  # Refused before any work: nothing created, nothing touched (the workdir's log included).
  assert _tree(tmp_path) == before, name


def test_verbose_shows_the_traceback(tmp_path):
  proc = _run("launch.py", "--config=configs/cnn_v3.py:debug", "--config.batch_size=0",
              f"--workdir={tmp_path / 'w'}", "--verbose")
  assert proc.returncode != 0 and "Traceback" in proc.stderr
  assert not os.path.exists(tmp_path / "w")


def test_evaluate_to_an_unwritable_place_fails_before_the_work(tmp_path):
  require(CHEST_XRAY)
  workdir = tmp_path / "w"
  workdir.mkdir()
  config = _cnn()
  workdir_lib.save_config(str(workdir), config)
  proc = _run("-m", "cxr_jax.tools.evaluate", f"--workdir={workdir}",
              "--output=/proc/cxr_jax/metrics.json")
  assert proc.returncode == 1 and "Cannot write /proc/cxr_jax/metrics.json" in proc.stderr


# (probe, the call on tmp_path's w/ and in/ that must be refused, what the error says).
OUTPUT_PROBES = [
    ("evaluate onto the workdir's config",
     lambda w, d: evaluate.evaluate_to_file(w, d, f"{w}/config.json"),
     "is config.json of the workdir"),
    ("evaluate onto its data folder", lambda w, d: evaluate.evaluate_to_file(w, d, d),
     "is also an input"),
    ("export into the workdir itself", lambda w, d: export.export_workdir(w, w),
     "--output_dir="),
    ("export into a checkpoint", lambda w, d: export.export_workdir(w, f"{w}/checkpoints/run/1"),
     "is checkpoints/run/1 of the workdir"),
    ("export into a read-only place",
     lambda w, d: export.export_workdir(w, "/proc/cxr_jax/export"),
     "Cannot write /proc/cxr_jax/export"),
    ("report onto a workdir", lambda w, d: report.build_report([collect.Entry("w", w)], w),
     "is also an input"),
    ("ensemble onto one of its members", lambda w, d: train.create_ensemble(w, [w, d]),
     "is also a member"),
]


@pytest.mark.parametrize("name, call, expected", OUTPUT_PROBES,
                         ids=[p[0] for p in OUTPUT_PROBES])
def test_outputs_onto_inputs_or_read_only_places_are_refused_before_any_work(
    name, call, expected, tmp_path):
  _probe_folder(tmp_path)
  before = _tree(tmp_path)
  with pytest.raises((ValueError, PermissionError)) as error:
    call(str(tmp_path / "w"), str(tmp_path / "in"))
  message = str(error.value)
  assert expected in message and "\n" not in message, (name, message)
  assert _tree(tmp_path) == before, name


def test_ctrl_c_stops_cleanly_and_says_where_to_resume(tmp_path):
  require(CHEST_XRAY)
  workdir = tmp_path / "w"
  log = open(tmp_path / "log.txt", "w+")  # A file, not a pipe nobody reads while waiting.
  proc = subprocess.Popen(
      # The session's CNN debug config: its programs are in the compilation cache.
      [sys.executable, "launch.py", f"--config={CNN_DEBUG}",
       "--config.data.source=folder", f"--config.data.data_dir={CHEST_XRAY}",
       # No early stop: the run must still be training when Ctrl-C comes (debug epochs
       # take 0.1 s, and a patience of 5 once ended it before the signal arrived).
       "--config.num_epochs=200", "--config.early_stopping_patience=1000",
       f"--workdir={workdir}"],
      cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      # A suite started in the background inherits SIGINT ignored, and Python then never
      # raises KeyboardInterrupt: give the run the terminal's default, as a user has it.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.time() + 240
  while time.time() < deadline and not (workdir / "history.json").exists():
    time.sleep(0.5)
  assert (workdir / "history.json").exists(), "no epoch finished in time"
  proc.send_signal(signal.SIGINT)
  proc.wait(timeout=120)
  log.seek(0)
  stderr = log.read()
  assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
  assert "Interrupted" in stderr and "resumes" in stderr
