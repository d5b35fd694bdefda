"""Progress a person can see wherever the output goes.

On a terminal: a live bar (rich) on stderr. Anywhere else (a log file, CI, ``make`` piped to a
file): one plain line on stderr at most every ``every`` seconds and one at the end, saying
done/total, the rate and the time left, so a long step never looks hung.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """``with Progress(total, "base model: generating", "prompts") as p: ... p.advance(n)``."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "items",
        every: float = 10.0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.total, self.label, self.unit, self.every = total, label, unit, every
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.done = 0
        self._bar = None
        self._t0 = self._last = time.perf_counter()

    def __enter__(self) -> Progress:
        if self.enabled and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._task = self._bar.add_task(self.label, total=self.total)
            self._bar.start()
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.perf_counter()
        if now - self._last >= self.every and self.done < self.total:
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def heartbeat(self, detail: str) -> None:
        """Inside a long unit of work (a batch of prompts): off a terminal, the usual line with
        ``detail`` once ``every`` seconds have passed since the last line."""
        if not self.enabled or self._bar is not None:
            return
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            print(f"{self.line(now)}; {detail}", file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """``label: 12/40 prompts (30%), 0.41 prompts/s, eta 1m08s`` (at the end: the time)."""
        elapsed = (now or time.perf_counter()) - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100 * self.done / self.total
        head = f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.2f} {self.unit}/s"
        if self.done >= self.total:
            return f"{head}, done in {_clock(elapsed)}"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{head}, eta {_clock(eta) if eta != float('inf') else '?'}"

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and exc[0] is None:
            print(self.line(), file=self.stream, flush=True)
