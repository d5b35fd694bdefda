"""Reading sources in chunks and writing records: the streaming edges of the pipeline.

The main process only splits files into chunks of raw rows (for .jsonl: undecoded lines, so
that JSON parsing happens in the workers); workers parse and convert rows with strop's own
format converters (strop.data.formats), so prepare accepts exactly what training reads, and
a bad row is reported as ``file:line: problem`` like everywhere else.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strop.data.formats import RowProblem, classify
from strop.data.readers import RawRow, read_rows, truncate, type_name
from strop.data.records import Message, Record
from strop.data.to_record import to_record
from strop.errors import StropError

DETECT_ROWS = 64
LAYOUT_OF = {"text": "text", "preference": "preference", "kto": "kto"}  # others: chat


@dataclass
class Chunk:
    """Rows of one file, in order. ``rows``: (origin, payload) with payload the raw .jsonl line
    (bytes) or, for other file types, the RawRow the reader produced."""

    fmt: str
    kind: str
    text_field: str
    rows: list[tuple[str, bytes | RawRow]]


def _detect(rows: list[dict[str, Any]], source: str, text_field: str) -> str:
    votes: Counter[str] = Counter()
    for row in rows:
        label = classify(row, text_field)
        if label == "messages" and "label" in row:
            label = "kto"  # messages + label: the last assistant turn is the completion
        if label is not None:
            votes[label] += 1
    if not votes:
        keys = list(dict.fromkeys(k for r in rows for k in r))[:12]
        raise StropError(
            f"{source}: cannot detect the data format from the keys "
            f"{', '.join(repr(k) for k in keys) or 'none'}; set the input's format "
            "(messages, sharegpt, alpaca, text, preference, kto)."
        )
    return votes.most_common(1)[0][0]


def _jsonl_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield f"{path}:{lineno}", line


def iter_chunks(inputs: list[Any], chunk_size: int) -> Iterator[Chunk]:
    """Chunks of at most ``chunk_size`` rows; a chunk never spans two files."""
    for spec in inputs:
        path = Path(spec.path)
        if not path.exists():
            raise StropError(f"{path}: no such file.")
        if not path.is_file():
            raise StropError(f"{path}: not a regular file.")
        is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
        rows: Iterator = _jsonl_lines(path) if is_jsonl else read_rows(path)
        fmt = spec.format
        if fmt == "auto":
            head = list(itertools.islice(rows, DETECT_ROWS * 4))
            parsed = [p for p in (_peek(r) for r in head) if p is not None][:DETECT_ROWS]
            fmt = _detect(parsed, str(path), spec.text_field) if parsed else "unknown"
            rows = itertools.chain(head, rows)
        kind = LAYOUT_OF.get(fmt, "chat")
        while True:
            batch = list(itertools.islice(rows, chunk_size))
            if not batch:
                break
            if not is_jsonl:
                batch = [(r.origin, r) for r in batch]
            yield Chunk(fmt, kind, spec.text_field, batch)


def _peek(row: tuple[str, bytes] | RawRow) -> dict[str, Any] | None:
    if isinstance(row, RawRow):
        return row.row
    try:
        value = json.loads(row[1])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def raw_text(payload: bytes | RawRow) -> str:
    """The row as read, for the quarantine file."""
    if isinstance(payload, RawRow):
        return payload.raw
    return truncate(payload.decode("utf-8", errors="replace"))


def parse_row(origin: str, payload: bytes | RawRow, chunk: Chunk) -> Record | str:
    """A Record, or the problem (as in strop.data.validate) when the row is unusable."""
    if isinstance(payload, RawRow):
        if payload.row is None:
            return payload.problem or "unusable row"
        row = payload.row
    else:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"invalid UTF-8 at byte {e.start}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            return f"invalid JSON: {e.msg} (column {e.colno})"
        if not isinstance(row, dict):
            return f"expected a JSON object, got {type_name(row)}"
    if chunk.fmt == "unknown":
        return "unusable row (the file's format could not be detected)"
    try:
        return to_record(chunk.fmt, row, origin, kind=chunk.kind, text_field=chunk.text_field)
    except RowProblem as e:
        return str(e)


# -- writing --------------------------------------------------------------------------------------
SHAREGPT_NAMES = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


def _msgs(msgs: list[Message] | None) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in msgs or []]


def to_row(rec: Record, fmt: str = "canonical") -> dict[str, Any]:
    """The record as one output row: canonical layouts (messages / text / prompt+chosen+
    rejected / prompt+completion+label), or sharegpt / alpaca for chat records."""
    layout = rec.layout
    if layout == "text":
        row: dict[str, Any] = {"text": rec.text}
    elif layout == "preference":
        row = {
            "prompt": _msgs(rec.messages),
            "chosen": _msgs(rec.chosen),
            "rejected": _msgs(rec.rejected),
        }
    elif layout == "kto":
        row = {
            "prompt": _msgs(rec.messages),
            "completion": _msgs(rec.completion),
            "label": rec.label,
        }
    elif fmt == "sharegpt":
        row = {
            "conversations": [
                {"from": SHAREGPT_NAMES[m.role], "value": m.content} for m in rec.messages
            ]
        }
    elif fmt == "alpaca":
        row = _alpaca(rec.messages)
    else:
        row = {"messages": _msgs(rec.messages)}
    for key, value in rec.meta.items():
        row.setdefault(key, value)  # meta never overwrites the record's own fields
    return row


def _alpaca(msgs: list[Message]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if msgs and msgs[0].role == "system":
        row["system"] = msgs[0].content
        msgs = msgs[1:]
    pairs = [[msgs[i].content, msgs[i + 1].content] for i in range(0, len(msgs), 2)]
    row.update(instruction=pairs[-1][0], input="", output=pairs[-1][1])
    if len(pairs) > 1:
        row["history"] = pairs[:-1]
    return row


# one encoder for every row: json.dumps with non-default options builds a new one per call
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def dumps(row: dict[str, Any]) -> str:
    """``json.dumps(row, ensure_ascii=False, default=str)``."""
    return _ENCODER.encode(row)


def jsonl_to_parquet(src: Path, dst: Path) -> None:
    """Stream a JSONL file into Parquet (schema from the first block; rows must agree)."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    if src.stat().st_size == 0:
        pq.write_table(pa.table({}), dst)
        return
    try:
        reader = pj.open_json(src)
        with pq.ParquetWriter(dst, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
    except pa.ArrowInvalid as e:
        dst.unlink(missing_ok=True)
        raise StropError(
            f"{dst}: cannot write Parquet, the rows of {src} do not share one schema ({e}); "
            "the JSONL output is complete."
        ) from None
