"""Interleaved timing: the two sides take turns, and the ratio's summary is the right one."""

from __future__ import annotations

import pytest

from cxr_lab.bench import timing


def test_ratio_summary_is_the_median_and_spread_of_per_repeat_rate_ratios():
  # Same work per repeat, so a's rate over b's is b's seconds over a's.
  s = timing.ratio_summary([1.0, 1.0, 2.0, 1.0, 1.0], [0.5, 1.0, 3.0, 2.0, 3.0])
  assert s["ratios"] == [0.5, 1.0, 1.5, 2.0, 3.0]
  assert s["median"] == 1.5 and s["iqr"] == [1.0, 2.0] and s["range"] == [0.5, 3.0]
  assert s["repeats"] == 5
  assert timing.ratio_summary([2.0], [1.0])["median"] == 0.5  # a slower: under 1.
  with pytest.raises(ValueError):
    timing.ratio_summary([1.0, 1.0], [1.0])
  with pytest.raises(ValueError):
    timing.ratio_summary([], [])


class _Clock:
  """A fake perf_counter that only the fns move: chunks take known, drifting times."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_interleaved_alternates_and_a_drifting_load_cancels_in_the_ratio(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(timing.time, "perf_counter", clock)
  calls, blocked = [], []

  def chunk(name: str, seconds: float):
    def run():
      load = 1.0 + 0.5 * (len(calls) // 2)  # The machine gets slower each repeat.
      calls.append(name)
      clock.now += seconds * load
      return f"{name}{len(calls)}"
    return run

  fns = {"flax": chunk("flax", 1.0), "keras": chunk("keras", 2.0)}
  blocks = {"flax": blocked.append, "keras": blocked.append}
  seconds = timing.interleaved(fns, 4, blocks)
  assert calls == ["flax", "keras"] * 4
  assert blocked == ["flax1", "keras2", "flax3", "keras4", "flax5", "keras6", "flax7", "keras8"]
  assert seconds["flax"] == [1.0, 1.5, 2.0, 2.5]  # The load moves each side's time ...
  summary = timing.ratio_summary(seconds["flax"], seconds["keras"])
  assert summary["ratios"] == [2.0] * 4  # ... but not the ratio: Flax twice Keras's rate.
  assert summary["median"] == 2.0 and summary["range"] == [2.0, 2.0]


def test_interleaved_takes_one_block_for_all_and_needs_a_repeat():
  blocked = []
  seconds = timing.interleaved({"a": lambda: 1, "b": lambda: 2}, 2, blocked.append)
  assert blocked == [1, 2, 1, 2] and [len(v) for v in seconds.values()] == [2, 2]
  assert all(s >= 0 for v in seconds.values() for s in v)
  with pytest.raises(ValueError, match="repeats"):
    timing.interleaved({"a": lambda: 1}, 0)


def test_chained_runs_continue_from_the_last_carry():
  run = timing.chained(lambda c: c + 1, 10)
  assert run(2) == 12 and run(3) == 15 and run(0) == 15
