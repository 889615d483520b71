"""The TensorFlow-free summary writer: TensorBoard's own reader finds every scalar."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

from cxr_jax.runtime import summaries
from tests.conftest import REPO


def test_tensorboard_reads_every_scalar_back(tmp_path):
  writer = summaries.ScalarWriter(str(tmp_path / "tb"))
  for step, loss in enumerate([0.7, 0.5, 0.25], start=1):
    writer.scalar("train_loss", loss, step)
    writer.scalar("val_auc", 1 - loss, step)
  writer.flush()
  writer.close()
  events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
  events.Reload()
  assert sorted(events.Tags()["scalars"]) == ["train_loss", "val_auc"]
  read = [(e.step, e.value) for e in events.Scalars("train_loss")]
  assert read == [(1, pytest.approx(0.7)), (2, pytest.approx(0.5)), (3, pytest.approx(0.25))]


def test_writing_summaries_imports_no_tensorflow(tmp_path):
  code = ("import sys; from cxr_jax.runtime import summaries; "
          f"w = summaries.ScalarWriter({str(tmp_path)!r}); w.scalar('a', 1.0, 1); w.close(); "
          "print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  assert out.strip() == "False"
