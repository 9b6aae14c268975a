"""Progress of long predictions: a tqdm bar on a terminal; off a terminal (logs, SLURM, CI) one plain line every
few percent, since tqdm's carriage-return updates become one line of megabytes in a log file."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

log = logging.getLogger("clamp_pl")

__all__ = ["LineProgress", "progress"]


class LineProgress:
    """``tqdm``'s ``update``/context-manager surface, writing ``desc: 30% (300/1000 frame, 12.3 frame/s)`` lines
    to ``stream`` at every ``step_percent``; with an unknown total, every ``seconds_unknown`` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO, step_percent: float = 10.0,
                 seconds_unknown: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.step, self.seconds_unknown = step_percent, seconds_unknown
        self.n = 0
        self._start = self._last_time = time.perf_counter()
        self._next = step_percent

    def _line(self) -> str:
        rate = self.n / max(time.perf_counter() - self._start, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f"{100.0 * self.n / self.total:.0f}% " if self.total else ""
        return f"{self.desc}: {pct}({done} {self.unit}, {rate:.1f} {self.unit}/s)\n"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.total:
            pct = 100.0 * self.n / self.total
            if pct + 1e-9 < self._next:
                return
            while self._next <= pct + 1e-9:
                self._next += self.step
        elif now - self._last_time < self.seconds_unknown:
            return
        self._last_time = now
        self.stream.write(self._line())
        self.stream.flush()

    def close(self) -> None:
        if not self.total or self.n < self.total:  # the last line says where it ended
            self.stream.write(self._line())
            self.stream.flush()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str, stream: TextIO | None = None) -> tqdm | LineProgress:
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else a :class:`LineProgress`."""
    stream = sys.stderr if stream is None else stream
    if hasattr(stream, "isatty") and stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
    return LineProgress(total, desc, unit, stream)
