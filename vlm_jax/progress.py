"""Progress lines for long work (evaluation passes, conversions): a log line at most every
`every_s` seconds with the count done, the rate and the time left, and one when finished."""
from __future__ import annotations

import math
import time

from absl import logging


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Ticker:
    """`update(n)` after each chunk of `total` items; logs '<what>: done/total (pct), rate/s,
    ETA' when `every_s` has passed since the last line; `close()` logs the total time when the
    work took that long (short passes stay quiet)."""

    def __init__(self, what: str, total: int, unit: str = "items", every_s: float = 10.0):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start
        self.lines: list[str] = []

    def _log(self, line: str) -> None:
        self.lines.append(line)
        logging.info("%s", line)

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < self.every_s or self.done >= self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        self._log(f"{self.what}: {self.done}/{self.total} {self.unit} "
                  f"({100 * self.done / max(self.total, 1):.0f}%), {rate:.1f}/s, "
                  f"ETA {duration((self.total - self.done) / rate)}")

    def close(self) -> float:
        """Seconds since the start."""
        took = time.perf_counter() - self.start
        if took >= self.every_s:
            self._log(f"{self.what}: {self.done} {self.unit} in {took:.1f}s")
        return took
