"""`run_prepare`: files in, cleaned dataset + quarantine + report out (the Python API the CLI
calls). See strop.data.prepare.pipeline for how the work is split and ordered."""

from __future__ import annotations

import json
import resource
import shutil
import sys
from array import array
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import yaml

from strop.config.schema import Section
from strop.data.prepare.config import PrepareConfig
from strop.data.prepare.convert import FILE_FORMATS
from strop.data.prepare.io import Chunk, iter_chunks, jsonl_to_parquet, raw_text
from strop.data.prepare.minhash import splitmix64
from strop.data.prepare.pipeline import ChunkRunner, Node, Walker, build_steps, run_chunks
from strop.data.prepare.report import (
    LENGTH_EDGES,
    Histogram,
    plot_lengths,
    step_entry,
    write_json,
    write_markdown,
)
from strop.errors import StropError, StropRuntimeError, disk_full
from strop.files import output_dir


@dataclass
class PrepareResult:
    output_dir: Path
    files: dict[str, Path]  # "data" or "train"/"eval", "quarantine", "report", ...
    report: dict[str, Any]


def _out_format(specs: list[tuple[str, Section]]) -> str:
    fmt = "canonical"
    for name, params in specs:
        if name == "convert":
            fmt = params.to if params.to in FILE_FORMATS else "canonical"
    return fmt


def _resolved(cfg: PrepareConfig, specs: list[tuple[str, Section]]) -> str:
    tree = cfg.model_dump(mode="json")
    tree["steps"] = [{"name": n, **p.model_dump(mode="json")} for n, p in specs]
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


def _peak_rss_mib(largest_worker: float | None = None) -> dict[str, float]:
    """This process's peak RSS and the largest worker's (local: child processes; Ray: what
    the actors reported)."""
    # ru_maxrss is KiB on Linux
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if largest_worker is not None:
        kids = largest_worker
    return {"main": round(me, 1), "largest_worker": round(kids, 1)}


class _Writer:
    """Survivors to the output (or to a temporary file when a split follows)."""

    def __init__(self, path: Path, stratify: bool) -> None:
        self.path = path
        # closed by run_prepare's finally; binary: the workers encoded every line already
        self.fh = open(path, "wb")  # noqa: SIM115
        self.count = 0
        self.after = Histogram()
        self.strata: dict[str, int] = {}
        self.codes = array("i") if stratify else None

    def __call__(self, node: Node) -> None:
        self.fh.write(node.out)
        self.count += 1
        self.after.add(node.length)
        if self.codes is not None:
            self.codes.append(self.strata.setdefault(node.stratum or "(missing)", len(self.strata)))


def _split(src: Path, out_dir: Path, name: str, cfg: PrepareConfig, w: _Writer) -> dict[str, Any]:
    """Exactly round(eval * n) records of every stratum to eval, chosen by a seeded hash of the
    record's position: deterministic, and independent of the number of workers."""
    split = cfg.split
    n = w.count
    rank = splitmix64(
        np.arange(n, dtype=np.uint64) ^ np.uint64(split.seed * 0x9E3779B97F4A7C15 % 2**64)
    )
    codes = np.frombuffer(w.codes, dtype=np.int32) if w.codes is not None else np.zeros(n, np.int32)
    is_eval = np.zeros(n, dtype=bool)
    per: dict[str, dict[str, int]] = {}
    names = {v: k for k, v in w.strata.items()} or {0: "(all)"}
    for code, label in names.items():
        idx = np.flatnonzero(codes == code)
        k = int(round(split.eval * len(idx)))
        is_eval[idx[np.argsort(rank[idx], kind="stable")[:k]]] = True
        per[label] = {"train": len(idx) - k, "eval": k}
    paths = {"train": out_dir / f"{name}.train.jsonl", "eval": out_dir / f"{name}.eval.jsonl"}
    with (
        open(src, encoding="utf-8") as fh,
        open(paths["train"], "w", encoding="utf-8") as tr,
        open(paths["eval"], "w", encoding="utf-8") as ev,
    ):
        for i, line in enumerate(fh):
            (ev if is_eval[i] else tr).write(line)
    src.unlink()
    return {"paths": paths, "stratify": split.stratify, "strata": per}


@dataclass
class _Quarantine:
    """The quarantine file: one JSON object per removed record or unreadable row."""

    path: Path
    count: int = 0

    def __post_init__(self) -> None:
        # closed by run_prepare's finally
        self.fh = open(self.path, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115

    def __call__(self, entry: dict) -> None:
        self.fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.count += 1


@contextmanager
def _executor(
    cfg: PrepareConfig,
    specs: list[tuple[str, Section]],
    runner: ChunkRunner,
    info: dict[str, Any],
    log: Callable[[str], None],
) -> Iterator[Callable[[Iterator[Chunk]], Iterator]]:
    """The function that turns chunks into (chunk, traces) in input order: local processes,
    or Ray actors for the lifetime of the run."""
    if cfg.executor == "local":
        info["workers"] = cfg.num_workers
        yield lambda chunks: run_chunks(chunks, runner, specs, cfg.num_workers)
        return
    from strop.data.prepare.ray_executor import ray_session, run_chunks_ray

    with ray_session(cfg.ray, log) as ray:
        yield lambda chunks: run_chunks_ray(
            ray, chunks, specs, runner.out_fmt, runner.stratify, cfg.ray, info
        )


def _stream(
    cfg: PrepareConfig,
    execute: Callable[[Iterator[Chunk]], Iterator],
    walker: Walker,
    quarantine: _Quarantine,
    log: Callable[[str], None],
    log_every: int,
) -> tuple[Histogram, int, int]:
    """Every row through the workers and the walker; (lengths before, rows, bad rows)."""
    before, rows, bad, t0 = Histogram(), 0, 0, perf_counter()
    next_log = log_every
    with closing(execute(iter_chunks(cfg.inputs, cfg.chunk_size))) as results_in_order:
        for chunk, (results, times) in results_in_order:
            for si, t in enumerate(times):
                walker.stats[si].seconds += t
            for (origin, payload), (length, node) in zip(chunk.rows, results, strict=True):
                rows += 1
                if length is None:  # unreadable: ``node`` holds the problem
                    bad += 1
                    entry = {"origin": origin, "step": "read", "rule": "bad_row", "reason": node}
                    quarantine({**entry, "raw": raw_text(payload)})
                    continue
                before.add(length)
                walker.walk(node, payload)
            if rows >= next_log:
                log(f"prepare: {rows} rows, {rows / (perf_counter() - t0):.0f} rows/s")
                next_log += log_every
    walker.finish()
    return before, rows, bad


def _outputs(cfg: PrepareConfig, data_path: Path, writer: _Writer) -> tuple[dict, dict | None]:
    """Split and Parquet after the stream: the output files by name, and the split summary."""
    files: dict[str, Path] = {}
    split_info = None
    if cfg.split:
        split_info = _split(data_path, data_path.parent, cfg.output.name, cfg, writer)
        files.update(split_info.pop("paths"))
    else:
        files["data"] = data_path
    if cfg.output.parquet:
        for key, path in list(files.items()):
            files[f"{key}_parquet"] = path.with_suffix(".parquet")
            jsonl_to_parquet(path, files[f"{key}_parquet"])
    return files, split_info


def run_prepare(
    cfg: PrepareConfig,
    specs: list[tuple[str, Section]] | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 100_000,
) -> PrepareResult:
    """Run the configured steps over the inputs and write every output; see docs/prepare.md.
    A full disk, or inputs without a single row, leave output.dir as it was before the run
    (what this run wrote is removed) and end with one sentence."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    specs = specs if specs is not None else cfg.step_params()
    existed = Path(cfg.output.dir).is_dir()
    out_dir = output_dir(cfg.output.dir, "output.dir")
    there = set(out_dir.iterdir())
    try:
        return _run(cfg, specs, log, log_every, out_dir)
    except BaseException as exc:
        full = disk_full(exc, out_dir)
        if full is None and not getattr(exc, "clean_outputs", False):
            raise
        for path in set(out_dir.iterdir()) - there:  # only what this run wrote
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if not existed and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if full is None:
            raise
        raise StropRuntimeError(f"writing {out_dir}: {full}") from None


def _run(cfg: PrepareConfig, specs, log, log_every: int, out_dir: Path) -> PrepareResult:
    name = cfg.output.name
    steps = build_steps(specs)
    stratify = cfg.split.stratify if cfg.split else None
    runner = ChunkRunner(steps, _out_format(specs), stratify)
    data_path = out_dir / (f".{name}.all.jsonl" if cfg.split else f"{name}.jsonl")
    writer = None
    try:
        (out_dir / "config.yaml").write_text(_resolved(cfg, specs), encoding="utf-8")
        writer = _Writer(data_path, stratify is not None)
        quarantine = _Quarantine(out_dir / "quarantine.jsonl")
    except OSError as e:
        if writer is not None:
            writer.fh.close()
        raise StropError(f"output.dir: cannot write {e.filename}: {e.strerror or e}.") from None
    walker = Walker(steps, writer, quarantine, out_dir)
    t0 = perf_counter()
    info: dict[str, Any] = {}
    try:
        with _executor(cfg, specs, runner, info, log) as execute:
            before, rows, bad = _stream(cfg, execute, walker, quarantine, log, log_every)
    finally:
        writer.fh.close()
        quarantine.fh.close()
    elapsed = perf_counter() - t0
    if rows == 0:
        empty = StropError(
            f"inputs: no rows in {', '.join(str(i.path) for i in cfg.inputs)} (empty files); "
            "nothing to prepare"
        )
        empty.clean_outputs = True
        raise empty
    files, split_info = _outputs(cfg, data_path, writer)
    files["quarantine"] = quarantine.path
    report = {
        "input": {
            "files": [s.path for s in cfg.inputs],
            "rows": rows,
            "records": rows - bad,
            "bad_rows": bad,
        },
        "steps": [step_entry(st, s.report()) for st, s in zip(walker.stats, steps, strict=True)],
        "output": {
            "records": writer.count,
            "format": runner.out_fmt,
            "files": {k: str(p) for k, p in files.items() if k != "quarantine"},
            "split": split_info,
        },
        "quarantined": quarantine.count,
        "quarantine_file": str(quarantine.path),
        "lengths": {"edges": LENGTH_EDGES, "before": before.counts, "after": writer.after.counts},
        "seconds": round(elapsed, 3),
        "records_per_s": round(rows / elapsed) if elapsed > 0 else None,
        "executor": cfg.executor,
        "num_workers": info["workers"],
        "peak_rss_mib": _peak_rss_mib(info.get("largest_worker_rss_mib")),
        "_before": before,
        "_after": writer.after,
    }
    for key, fname in (
        ("report_json", "report.json"),
        ("report_md", "report.md"),
        ("plot", "lengths.png"),
    ):
        files[key] = out_dir / fname
    write_json(report, files["report_json"])
    write_markdown(report, files["report_md"])
    plot_lengths(before, writer.after, files["plot"])
    if rows and bad / rows > cfg.max_bad_fraction:
        raise StropError(
            f"{bad} of {rows} rows are malformed ({bad / rows:.1%}), more than max_bad_fraction="
            f"{cfg.max_bad_fraction}; they are listed with file:line in {quarantine.path} (outputs "
            "were written; fix the rows or raise max_bad_fraction)."
        )
    return PrepareResult(out_dir, files, report)
