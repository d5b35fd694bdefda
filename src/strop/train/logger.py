"""Metrics to console (progress bar with rate and ETA), metrics.jsonl and TensorBoard.

Only rank 0 logs; other ranks get a logger whose methods do nothing. A run resumed at step S
first drops the rows the interrupted run logged after S (they are logged again), so
metrics.jsonl reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
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

from strop.errors import StropRuntimeError, disk_full


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
        self.path = run_dir / "metrics.jsonl"
        # Rows at the resume step itself stay; one the resumed run logs again replaces them.
        self._step_rows = truncate_after(self.path, start_step) if enabled else []
        self._file = open(self.path, "a") if enabled else None  # noqa: SIM115
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # Events after the resume step are dropped too (logged again).
                purge = {"purge_step": start_step + 1} if start_step else {}
                self._tb = SummaryWriter(str(run_dir / "tensorboard"), **purge)
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
        if record["step"] == self._start_step and any(
            r.keys() == record.keys() for r in self._step_rows
        ):  # e.g. the final eval of a run that was stopped after logging it
            self._file.close()
            truncate_after(self.path, self._start_step - 1, keep=self._step_rows, drop=record)
            self._step_rows = [r for r in self._step_rows if r.keys() != record.keys()]
            self._file = open(self.path, "a")  # noqa: SIM115
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as exc:
            raise StropRuntimeError(
                f"writing {self.path}: {disk_full(exc, self.path) or exc}"
            ) from None
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


def truncate_after(
    path: Path, step: int, keep: list[dict] | None = None, drop: dict | None = None
) -> list[dict]:
    """Rewrite ``path`` (atomically) without rows past ``step`` and without a half-written last
    line; ``keep`` adds back rows of step + 1, less those with ``drop``'s keys. Returns the rows
    at ``step``."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    kept, at_step = [], []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed run, cut mid-write
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        if row["step"] <= step:
            kept.append(line)
            at_step += [row] if row["step"] == step else []
    for row in keep or []:
        if drop is None or row.keys() != drop.keys():
            kept.append(json.dumps(row))
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StropRuntimeError(f"writing {path}: {disk_full(exc, path) or exc}") from None
    return at_step
