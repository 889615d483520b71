"""RunCheckpoints on a failing disk: what tensorstore's dying writes print goes to the log,
not over the one-line error the caller gives, and the error still reaches the caller."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest

from cxr_jax import checkpoints


def _save(run):
  run.save(1, {"w": np.zeros(2)}, {"params": {"w": np.zeros(2)}}, {"epoch": 1})


def test_a_failed_save_keeps_its_writes_noise_off_the_console(tmp_path, monkeypatch, capfd,
                                                               caplog):
  run = checkpoints.RunCheckpoints(str(tmp_path / "w"))

  def full_disk(*args, **kwargs):  # As tensorstore's callbacks do, then Orbax raises.
    os.write(2, b"Traceback (from the descriptor)\n")
    print("Traceback (from sys.stderr)", file=sys.stderr)
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(run._manager, "save", full_disk)  # pylint: disable=protected-access
  with caplog.at_level(logging.DEBUG), pytest.raises(OSError, match="No space left"):
    _save(run)
  assert "Traceback" not in capfd.readouterr().err
  assert "Traceback (from the descriptor)" in caplog.text  # In the log file instead.
  run.close()


def test_a_save_that_succeeds_writes_a_step_and_loses_no_output(tmp_path, capfd):
  run = checkpoints.RunCheckpoints(str(tmp_path / "w"))
  _save(run)
  run.close()
  assert os.path.isdir(tmp_path / "w" / "checkpoints" / "run" / "1")
  assert capfd.readouterr().err == ""  # Orbax printed nothing; fd 2 is back.
  print("after", file=sys.stderr)
  assert capfd.readouterr().err == "after\n"
