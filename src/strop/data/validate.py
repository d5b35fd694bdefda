"""Load training records from files: read, detect the format, convert, validate, quarantine.

This is the one entry point stages use (``load_records``). Every row either becomes a ``Record``
or a ``BadRecord`` with ``file:line: what is wrong``; bad rows go to a quarantine file and into
the summary, and loading stops (StropError) when their share exceeds ``max_bad_fraction``
(DESIGN.md §5). Nothing is dropped silently.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from strop.data.formats import KIND_FORMATS, RowProblem, detect_format
from strop.data.readers import RawRow, read_rows
from strop.data.records import BadRecord, Record
from strop.data.to_record import to_record
from strop.errors import StropError

DETECT_ROWS = 64  # parsed rows looked at to detect a file's format
SHOWN_PROBLEMS = 5  # problems listed in the summary


@dataclass
class LoadResult:
    records: list[Record]
    bad: list[BadRecord]
    format: str  # the detected/used format name ("a,b" when files differ)
    total_rows: int  # non-blank rows read, good and bad
    sources: list[str] = field(default_factory=list)
    quarantine_path: Path | None = None

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / self.total_rows if self.total_rows else 0.0

    def headline(self) -> str:
        """One line: "train.jsonl: 498 records read, 2 bad (0.4%): see quarantine.jsonl"."""
        names = ", ".join(self.sources) if len(self.sources) <= 3 else f"{len(self.sources)} files"
        line = f"{names}: {len(self.records)} records read, {len(self.bad)} bad"
        if self.bad:
            line += f" ({_percent(self.bad_fraction)})"
            if self.quarantine_path is not None:
                line += f": see {self.quarantine_path}"
        return line

    def problems(self, limit: int = SHOWN_PROBLEMS) -> list[str]:
        """The first ``limit`` bad rows as "file:line: problem", plus a count of the rest."""
        lines = [f"{b.origin}: {b.problem}" for b in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"... and {len(self.bad) - limit} more")
        return lines

    def summary(self) -> str:
        """The headline, then the first few problems, one per indented line."""
        return "\n".join([self.headline(), *(f"  {p}" for p in self.problems())])


def _percent(share: float) -> str:
    if 0 < share < 0.001:
        return "<0.1%"
    return f"{share * 100:.1f}%"


def _as_paths(paths: str | Path | list[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    if not paths:
        raise StropError("no data files given.")
    return [Path(p) for p in paths]


def _convert_file(path: Path, fmt: str, kind: str, text_field: str, out: LoadResult) -> str:
    """Read one file into ``out`` (records, bad rows, row count); return the format used."""
    rows: Iterator[RawRow] = read_rows(path)
    if fmt == "auto":
        # Buffer the first rows for detection, then replay them: the file is read only once.
        head = list(itertools.islice(rows, DETECT_ROWS * 4))
        parsed = [r.row for r in head if r.row is not None][:DETECT_ROWS]
        # A file whose rows are all unparseable has no format; every row is reported bad below.
        fmt = detect_format(parsed, str(path), text_field, kind) if parsed else "unknown"
        rows = itertools.chain(head, rows)
    for raw in rows:
        out.total_rows += 1
        problem = raw.problem
        if raw.row is not None and fmt != "unknown":
            try:
                out.records.append(
                    to_record(fmt, raw.row, raw.origin, kind=kind, text_field=text_field)
                )
                continue
            except RowProblem as e:
                problem = str(e)
        out.bad.append(BadRecord(raw.origin, problem or "unusable row", raw.raw))
    return fmt


def write_quarantine(bad: list[BadRecord], path: Path | None) -> None:
    """One JSON object per bad row; no file at all (not even a stale one) when nothing is bad."""
    if path is None:
        return
    path = Path(path)
    if not bad:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as fh:
        for b in bad:
            obj = {"origin": b.origin, "problem": b.problem, "raw": b.raw}
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")


def load_records(
    paths: str | Path | list[str | Path],
    fmt: str = "auto",
    *,
    kind: str = "chat",
    quarantine_path: Path | None = None,
    max_bad_fraction: float = 0.01,
    text_field: str = "text",
) -> LoadResult:
    """Read, convert and validate every row of ``paths`` (.jsonl .json .csv .parquet).

    ``fmt``: "auto" (detected per file from its first parsed rows) or one of alpaca, sharegpt,
    messages, text, preference, kto. ``kind="chat"`` (sft) needs conversations: text rows are
    bad records. ``kind="text"`` (pt) gives ``Record(text=...)``; chat rows are accepted and
    converted by joining their message contents with "\\n\\n". ``kind="preference"`` (rm,
    dpo, simpo, orpo) and ``kind="kto"`` read the layouts of strop.data.preference_formats.

    Bad rows are collected as BadRecords ("path:line"), written to ``quarantine_path`` if given,
    and counted. Raises StropError for a missing or unsupported file, undetectable or preference
    data, an empty dataset, or when the bad share exceeds ``max_bad_fraction``; otherwise returns
    the result, whose ``summary()`` the caller prints.
    """
    if kind not in KIND_FORMATS:
        raise ValueError(f"unknown kind {kind!r}")  # a programming error
    if fmt != "auto" and fmt not in KIND_FORMATS[kind]:
        raise StropError(
            f"data.format '{fmt}' is not a format this stage reads "
            f"(supported: auto, {', '.join(KIND_FORMATS[kind])})."
        )
    files = _as_paths(paths)
    result = LoadResult(records=[], bad=[], format=fmt, total_rows=0)
    result.sources = [str(p) for p in files]
    result.quarantine_path = Path(quarantine_path) if quarantine_path is not None else None
    used: list[str] = []
    for path in files:
        file_fmt = _convert_file(path, fmt, kind, text_field, result)
        if file_fmt not in used:
            used.append(file_fmt)
    result.format = ",".join(used)
    write_quarantine(result.bad, result.quarantine_path)
    if result.total_rows == 0:
        raise StropError(f"{', '.join(result.sources)}: no rows found; the data is empty.")
    check_bad_share(result, max_bad_fraction)
    return result


def check_bad_share(result: LoadResult, max_bad_fraction: float) -> None:
    """StropError with the summary when bad rows are more than ``max_bad_fraction`` of all."""
    if result.bad_fraction > max_bad_fraction:
        raise StropError(
            f"{result.headline()}, more than the allowed {_percent(max_bad_fraction)} "
            f"(max_bad_fraction={max_bad_fraction}); fix these rows or raise the threshold:\n"
            + "\n".join(f"  {p}" for p in result.problems())
        )


def add_bad_records(result: LoadResult, bad: list[BadRecord], max_bad_fraction: float) -> None:
    """Rows found bad after loading (a chat template that cannot render them): out of
    ``records``, into ``bad`` and the quarantine file, and the share checked again."""
    if not bad:
        return
    origins = {b.origin for b in bad}
    result.records = [r for r in result.records if r.origin not in origins]
    result.bad.extend(bad)
    write_quarantine(result.bad, result.quarantine_path)
    check_bad_share(result, max_bad_fraction)
