"""The steps on in-memory records, for notebooks and other stages:

kept, removed = clean_records(records, [("normalise", {}), ("pii", {"email": "drop"})])
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strop.config.schema import Section
from strop.data.prepare.config import _validate_step
from strop.data.prepare.pipeline import ChunkRunner, Node, StepStats, Walker, build_steps
from strop.data.records import Record


@dataclass
class CleanResult:
    kept: list[Record]
    removed: list[dict[str, Any]]  # quarantine entries: origin, step, rule, reason
    stats: list[StepStats] = field(default_factory=list)

    def __iter__(self):  # kept, removed = clean_records(...)
        return iter((self.kept, self.removed))


def clean_records(
    records: Iterable[Record],
    steps: list[tuple[str, dict[str, Any] | Section]],
    chunk_size: int = 1000,
) -> CleanResult:
    """Run ``steps`` (name + params) over ``records`` in this process, in order."""
    specs = []
    for i, (name, params) in enumerate(steps):
        raw = params.model_dump() if isinstance(params, Section) else dict(params)
        specs.append(_validate_step(i, {"name": name, **raw}, "clean_records"))
    built = build_steps(specs)
    runner = ChunkRunner(built, "canonical", None, keep_records=True)
    kept: list[Record] = []
    removed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        walker = Walker(built, lambda node: kept.append(node.record), removed.append, Path(tmp))
        batch: list[tuple[Record, Node]] = []
        for rec in [*records, None]:
            if rec is not None:
                batch.append((rec, Node(rec.origin)))
            if batch and (rec is None or len(batch) >= chunk_size):
                times = runner.trace(batch)
                for si, t in enumerate(times):
                    walker.stats[si].seconds += t
                for _, node in batch:
                    walker.walk(node, b"")
                batch = []
        walker.finish()
    return CleanResult(kept, removed, walker.stats)
