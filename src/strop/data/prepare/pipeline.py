"""Run a prepare pipeline over files: chunks out to workers, decisions in input order, outputs.

Each chunk of rows goes through every step in a worker (``ChunkRunner``): stateless steps
rewrite or remove records, stateful ones (dedup) only compute a key. The worker returns, per
row, a trace of what each step said (``Node``) plus the finished output line. The main process
then walks the traces in input order (``Walker``): it asks each stateful step to decide on its
key, stops at the first removal, counts everything per step and writes survivors, so the
output does not depend on how many workers there are or which finished first. Memory stays
bounded: at most ``2 * num_workers`` chunks are in flight, and only the dedup indexes grow.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, BinaryIO

from strop.config.schema import Section
from strop.data.prepare.base import (
    Changed,
    Decision,
    Expanded,
    Keyed,
    Noted,
    Removed,
    Step,
    char_length,
)
from strop.data.prepare.io import Chunk, dumps, parse_row, raw_text, to_row
from strop.data.prepare.steps import STEPS
from strop.data.records import Record

KEPT, NOTED, CHANGED, REMOVED, KEYED, EXPANDED = range(6)


@dataclass(slots=True)
class Node:
    """What happened to one record: (step, code, data) events, then either children (after a
    step split it) or the output line of the finished record."""

    origin: str
    events: list[tuple] = field(default_factory=list)
    children: list[Node] | None = None
    # the output line, newline included, encoded in the worker: the main process writes the
    # bytes as they come (no UTF-8 decode when unpickling, no encode when writing)
    out: bytes | None = None
    length: int = 0
    stratum: str | None = None
    record: Record | None = None  # the finished record itself, for the in-memory API only

    def __reduce__(self) -> tuple:
        # positional fields: unpickling calls __init__ once instead of setting each slot
        return Node, (
            self.origin,
            self.events,
            self.children,
            self.out,
            self.length,
            self.stratum,
            self.record,
        )


def add_notes(counts: Counter, notes: dict[str, int]) -> None:
    """``counts.update(notes)`` without Counter.update's generic checks (once per event)."""
    for key, n in notes.items():
        counts[key] += n


def build_steps(specs: list[tuple[str, Section]]) -> list[Step]:
    return [STEPS[name](params) for name, params in specs]


def stratum_of(rec: Record, field_name: str | None) -> str | None:
    if field_name is None:
        return None
    if field_name == "layout":
        return rec.layout
    value = rec.meta.get(field_name)
    return "(missing)" if value is None else str(value)


class ChunkRunner:
    """The per-record work, identical in a worker process and inline."""

    def __init__(
        self, steps: list[Step], out_fmt: str, stratify: str | None, keep_records: bool = False
    ) -> None:
        self.steps, self.out_fmt, self.stratify = steps, out_fmt, stratify
        self.keep_records = keep_records

    def __call__(
        self, chunk: Chunk
    ) -> tuple[list[tuple[int, Node] | tuple[None, str]], list[float]]:
        rows: list = []
        live: list[tuple[Record, Node]] = []
        for origin, payload in chunk.rows:
            rec = parse_row(origin, payload, chunk)
            if isinstance(rec, str):
                rows.append((None, rec))
                continue
            node = Node(origin)
            rows.append((char_length(rec), node))
            live.append((rec, node))
        return rows, self.trace(live)

    def trace(self, live: list[tuple[Record, Node]]) -> list[float]:
        """Run every step over the records, filling in their nodes; seconds per step."""
        times = [0.0] * len(self.steps)
        for si, step in enumerate(self.steps):
            if not live:
                break
            t0 = perf_counter()
            results = step.apply([rec for rec, _ in live])
            times[si] = perf_counter() - t0
            live = self._record(si, live, results)
        for rec, node in live:
            node.out = (dumps(to_row(rec, self.out_fmt)) + "\n").encode("utf-8", "surrogatepass")
            node.length = char_length(rec)
            node.stratum = stratum_of(rec, self.stratify)
            if self.keep_records:
                node.record = rec
        return times

    @staticmethod
    def _record(si: int, live: list, results: list) -> list[tuple[Record, Node]]:
        nxt: list[tuple[Record, Node]] = []
        for (rec, node), res in zip(live, results, strict=True):
            if res is None:
                node.events.append((si, KEPT))
                nxt.append((rec, node))
            elif isinstance(res, Keyed):
                node.events.append((si, KEYED, res.key, res.notes))
                nxt.append((rec, node))
            elif isinstance(res, Changed):
                node.events.append((si, CHANGED, res.notes))
                nxt.append((res.record, node))
            elif isinstance(res, Noted):
                node.events.append((si, NOTED, res.notes))
                nxt.append((rec, node))
            elif isinstance(res, Removed):
                node.events.append((si, REMOVED, res.rule, res.detail, res.notes))
            elif isinstance(res, Expanded):
                node.events.append((si, EXPANDED, res.rule))
                node.children = [Node(r.origin) for r in res.records]
                nxt.extend(zip(res.records, node.children, strict=True))
            else:  # a step returned something it should not: a programming error
                raise TypeError(f"step {si} returned {type(res).__name__}")
        return nxt


# -- worker processes -----------------------------------------------------------------------------
_RUNNER: ChunkRunner | None = None


def _init_worker(specs: list[tuple[str, dict]], out_fmt: str, stratify: str | None) -> None:
    global _RUNNER
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker, also inside torch
    steps = [STEPS[name](STEPS[name].Params.model_validate(p)) for name, p in specs]
    _RUNNER = ChunkRunner(steps, out_fmt, stratify)


def _run_chunk(chunk: Chunk) -> tuple[list, list[float]]:
    assert _RUNNER is not None
    return _RUNNER(chunk)


def run_chunks(
    chunks: Iterator[Chunk],
    runner: ChunkRunner,
    specs: list[tuple[str, Section]],
    num_workers: int,
) -> Iterator[tuple[Chunk, tuple[list, list[float]]]]:
    """(chunk, result) in input order; at most 2 chunks per worker in flight."""
    if num_workers <= 1:
        for chunk in chunks:
            yield chunk, runner(chunk)
        return
    plain = [(name, p.model_dump()) for name, p in specs]
    ctx = multiprocessing.get_context("spawn")  # no fork: safe with threads and torch
    with ProcessPoolExecutor(
        num_workers,
        ctx,
        initializer=_init_worker,
        initargs=(plain, runner.out_fmt, runner.stratify),
    ) as pool:
        window: deque = deque()
        for chunk in chunks:
            window.append((chunk, pool.submit(_run_chunk, chunk)))
            if len(window) >= 2 * num_workers:
                done, fut = window.popleft()
                yield done, fut.result()
        while window:
            done, fut = window.popleft()
            yield done, fut.result()


# -- the main process: decisions in input order ---------------------------------------------------
@dataclass
class StepStats:
    name: str
    into: int = 0
    kept: int = 0
    changed: int = 0
    removed: int = 0
    added: int = 0
    rules: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # time in apply, summed over workers
    decide_seconds: float = 0.0  # time deciding in the main process (stateful steps)


class Spool:
    """Records waiting for a deferred decision, pickled to disk a batch at a time.

    The spool is an anonymous temporary file (no name in the output dir), written and read
    back through the same handle by this process only: no other file can be swapped in and
    unpickled in its place."""

    def __init__(self, path: Path) -> None:
        self.path, self.batch, self.count = path, [], 0
        self.fh: BinaryIO | None = None

    def add(self, entry: tuple) -> None:
        self.batch.append(entry)
        self.count += 1
        if len(self.batch) >= 1000:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            if self.fh is None:
                self.fh = tempfile.TemporaryFile(dir=self.path.parent)  # noqa: SIM115
            pickle.dump(self.batch, self.fh, protocol=pickle.HIGHEST_PROTOCOL)
            self.batch = []

    def __iter__(self) -> Iterator[tuple]:
        self.flush()
        if self.fh is None:
            return
        fh, self.fh = self.fh, None
        with fh:  # closing the anonymous file frees it
            fh.seek(0)
            while True:
                try:
                    yield from pickle.load(fh)
                except EOFError:
                    break


class Walker:
    """Walks traces in input order: decides, counts, quarantines, hands survivors on."""

    def __init__(
        self,
        steps: list[Step],
        keep: Callable[[Node], None],
        quarantine: Callable[[dict], None],
        spool_dir: Path,
    ) -> None:
        self.steps, self.keep, self.quarantine = steps, keep, quarantine
        self.stats = [StepStats(s.name) for s in steps]
        self.spools = {
            i: Spool(spool_dir / f".spool-{i}.pkl") for i, s in enumerate(steps) if s.stateful
        }
        self.uid = 0

    def walk(
        self,
        node: Node,
        raw: Any,
        pos: int = 0,
        uid: int | None = None,
        forced: Decision | None = None,
    ) -> None:
        if uid is None:
            uid, self.uid = self.uid, self.uid + 1
        for j in range(pos, len(node.events)):
            ev = node.events[j]
            si, code = ev[0], ev[1]
            st = self.stats[si]
            if code == KEYED:
                if forced is not None and j == pos:
                    decision = forced
                else:
                    t0 = perf_counter()
                    decision = self.steps[si].decide(ev[2], node.origin, {"uid": uid, "raw": raw})
                    st.decide_seconds += perf_counter() - t0
                if decision.pending:
                    self.spools[si].add((node, raw, j, uid))
                    return
                st.into += 1
                add_notes(st.notes, ev[3])
                if decision.removed is not None:
                    self._remove(st, node, raw, decision.removed, decision.duplicate_of)
                    return
                st.kept += 1
                continue
            st.into += 1
            if code == KEPT:
                st.kept += 1
            elif code == NOTED:
                st.kept += 1
                add_notes(st.notes, ev[2])
            elif code == CHANGED:
                st.changed += 1
                add_notes(st.notes, ev[2])
            elif code == REMOVED:
                add_notes(st.notes, ev[4])
                self._remove(st, node, raw, Removed(ev[2], ev[3]), None)
                return
            elif code == EXPANDED:
                st.changed += 1
                st.added += len(node.children) - 1
                st.rules[ev[2]] += 1
        if node.children is not None:
            for child in node.children:
                self.walk(child, raw)
            return
        self.keep(node)

    def _remove(
        self, st: StepStats, node: Node, raw: Any, removed: Removed, dup_of: str | None
    ) -> None:
        st.removed += 1
        st.rules[removed.rule] += 1
        entry = {
            "origin": node.origin,
            "step": st.name,
            "rule": removed.rule,
            "reason": removed.detail,
        }
        if dup_of is not None:
            entry["duplicate_of"] = dup_of
        entry["raw"] = raw_text(raw)  # decoded only now: most rows are never quarantined
        self.quarantine(entry)

    def finish(self) -> None:
        """Resolve deferred steps in pipeline order; resumed records may wait at a later one."""
        for si in sorted(self.spools):
            spool = self.spools[si]
            if spool.count == 0:
                continue
            t0 = perf_counter()
            decisions = self.steps[si].finish()
            self.stats[si].decide_seconds += perf_counter() - t0
            for node, raw, j, uid in spool:
                self.walk(node, raw, j, uid, forced=decisions.get(uid, Decision()))
