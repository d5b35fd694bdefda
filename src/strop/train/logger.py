"""Metrics to console (progress bar with rate and ETA), metrics.jsonl and TensorBoard.

Only rank 0 logs; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        start_tokens: int,
        enabled: bool,
        progress: bool,
        tensorboard: bool,
    ):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._file = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None
        self._progress = None
        self._total, self._start_step, self._t0 = total_steps, start_step, time.perf_counter()
        self._rate_mark = (self._t0, start_tokens)  # (time, tokens) at the last logged step
        # A live bar only on a terminal; logs and CI get one plain line per logged step.
        self._lines = enabled and progress and not self.console.is_terminal
        if enabled and progress and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, status="", rate=""
            )
            self._progress.start()

    def print(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._lines:
            self.console.print(self._plain_line(record), highlight=False)
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, record["step"])

    def _plain_line(self, r: dict) -> str:
        if "loss" not in r:
            return f"step {r['step']}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in r.items() if k != "step"
            )
        done = r["step"] - self._start_step
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / max(done, 1) * (self._total - r["step"])
        rate = r.get("target_tokens_per_s")
        return (
            f"step {r['step']}/{self._total} loss {r['loss']:.4f} lr {r['lr']:.2e} "
            f"grad_norm {r['grad_norm']:.3f}"
            + (f" {rate:,.0f} target tok/s" if rate else "")
            + f" eta {int(eta // 60)}m{int(eta % 60):02d}s"
        )

    def step(self, record: dict, log_every: int, last: bool) -> None:
        """One optimizer step: every ``log_every`` steps (and the last) the record gets the
        target-token rate since the previous logged step and is written; the bar advances."""
        if record["step"] % log_every == 0 or last:
            now = time.perf_counter()
            prev_t, prev_tokens = self._rate_mark
            rate = (record["tokens"] - prev_tokens) / max(now - prev_t, 1e-9)
            record["target_tokens_per_s"] = rate
            self._rate_mark = (now, record["tokens"])
            self.log(record)
        self.advance(record["step"], record["loss"], record.get("target_tokens_per_s"))

    def advance(self, step: int, loss: float | None, tokens_per_s: float | None) -> None:
        if self._progress is None:
            return
        status = f"loss {loss:.4f}" if loss is not None else ""
        rate = f"{tokens_per_s:,.0f} tok/s" if tokens_per_s else ""
        self._progress.update(self._task, completed=step, status=status, rate=rate)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
