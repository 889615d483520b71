"""RunCheckpoints on a failing disk: the error reaches the caller after the writes still in
flight have settled (their dying output goes to the log, not over the one-line error)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_jax import checkpoints


def test_a_failed_save_settles_in_flight_writes_then_raises(tmp_path, monkeypatch):
  run = checkpoints.RunCheckpoints(str(tmp_path / "w"))
  settled = []
  monkeypatch.setattr(checkpoints, "_settle_failed_io", lambda: settled.append(True))

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(run._manager, "save", full_disk)  # pylint: disable=protected-access
  with pytest.raises(OSError, match="No space left"):
    run.save(1, {"w": np.zeros(2)}, {"params": {"w": np.zeros(2)}}, {"epoch": 1})
  assert settled == [True]
  run.close()
