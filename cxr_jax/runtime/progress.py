"""Progress bars for long work (decoding, epochs, feature caching, reports, predictions).

tqdm, shown only on a terminal (`disable=None`): logs, CI and pipes get none.
"""

from __future__ import annotations

from typing import Iterable

from tqdm import tqdm


def bar(iterable: Iterable, total: int | None = None, desc: str = "", unit: str = "it"):
  """`iterable`, with a bar and the time left when stderr is a terminal."""
  return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None, leave=False,
              dynamic_ncols=True, mininterval=0.5)
