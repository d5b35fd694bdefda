"""File readers: turn a .jsonl / .json / .csv / .parquet file into raw rows, lazily.

Every reader yields ``RawRow(origin, row, raw, problem)``:

- ``origin`` points back at the source: ``"path:line"`` (1-based) for .jsonl and .csv,
  ``"path:item N"`` (1-based) for .json arrays, ``"path:row N"`` (1-based) for .parquet;
- ``row`` is the parsed dict, or ``None`` when the row could not be parsed;
- ``raw`` is the row as read (for the quarantine file);
- ``problem`` says what is wrong when ``row`` is ``None``.

A row that cannot be parsed is yielded with its problem rather than raised, so one broken line
never hides the rest of the file. Only whole-file failures (missing file, unsupported type, a
.json file that is not valid JSON) raise ``StropError``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from strop.errors import StropError

MAX_RAW_CHARS = 4000  # keep quarantine files readable even when a row is huge


class RawRow(NamedTuple):
    origin: str
    row: dict[str, Any] | None
    raw: str
    problem: str | None


def type_name(value: object) -> str:
    """The name users see for a value's type ("null" reads better than "NoneType")."""
    return "null" if value is None else type(value).__name__


def truncate(raw: str) -> str:
    if len(raw) <= MAX_RAW_CHARS:
        return raw
    return raw[:MAX_RAW_CHARS] + f"... [{len(raw) - MAX_RAW_CHARS} more characters]"


def _dump(value: object) -> str:
    return truncate(json.dumps(value, ensure_ascii=False, default=str))


def _object_row(origin: str, value: object, raw: str) -> RawRow:
    if isinstance(value, dict):
        return RawRow(origin, value, raw, None)
    return RawRow(origin, None, raw, f"expected a JSON object, got {type_name(value)}")


def read_jsonl(path: Path) -> Iterator[RawRow]:
    """Read bytes line by line so that one bad line (bad UTF-8, bad JSON) stays one bad row."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 BOM written by some editors is not part of the JSON
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue  # blank lines carry no row, so they are not counted as bad
            origin = f"{path}:{lineno}"
            raw = truncate(line.decode("utf-8", errors="replace"))
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRow(origin, None, raw, f"invalid UTF-8 at byte {e.start}")
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield RawRow(origin, None, raw, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            yield _object_row(origin, value, raw)


def read_json(path: Path) -> Iterator[RawRow]:
    """A top-level list of objects, or an object holding that list under "data"."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise StropError(f"{path}: invalid UTF-8 at byte {e.start}.") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise StropError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}."
        ) from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise StropError(
            f"{path}: expected a JSON list of records (or an object with a list under 'data'), "
            f"got {type_name(value)}."
        )
    for i, item in enumerate(value, start=1):
        yield _object_row(f"{path}:item {i}", item, _dump(item))


def _has_bad_utf8(field: str) -> bool:
    # surrogateescape maps each undecodable byte to U+DC80..U+DCFF
    return any("\udc80" <= ch <= "\udcff" for ch in field)


def read_csv(path: Path) -> Iterator[RawRow]:
    """A header row, then one record per row; every value is a string.

    csv.reader (not DictReader) so a row with too many or too few fields is reported, not padded
    or truncated silently. The origin is the line on which the row starts (quoted fields may span
    lines).
    """
    with open(path, "rb") as binary:
        # surrogateescape: undecodable bytes become one bad row instead of aborting the file.
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise StropError(f"{path}:1: cannot read the CSV header: {e}.") from None
        if any(_has_bad_utf8(h) for h in header):
            raise StropError(f"{path}:1: the CSV header is not valid UTF-8.")
        yield from _csv_rows(path, reader, header)


def _csv_rows(path: Path, reader: Any, header: list[str]) -> Iterator[RawRow]:
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield RawRow(f"{path}:{start}", None, "", f"invalid CSV: {e}")
            start = reader.line_num + 1
            continue
        origin, start = f"{path}:{start}", reader.line_num + 1
        if not fields:
            continue  # blank line
        joined = ",".join(fields)
        raw = truncate(joined.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        if _has_bad_utf8(joined):
            col = next(h for h, f in zip(header, fields, strict=False) if _has_bad_utf8(f))
            yield RawRow(origin, None, raw, f"invalid UTF-8 in column '{col}'")
        elif len(fields) != len(header):
            problem = f"expected {len(header)} fields (as in the header), got {len(fields)}"
            yield RawRow(origin, None, raw, problem)
        else:
            yield RawRow(origin, dict(zip(header, fields, strict=True)), raw, None)


def read_parquet(path: Path) -> Iterator[RawRow]:
    """Rows of a parquet file, read in batches so large files stay lazy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
        n = 0
        for batch in pfile.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield RawRow(f"{path}:row {n}", row, _dump(row), None)
    except (pa.ArrowException, OSError) as e:
        raise StropError(f"{path}: cannot read the parquet file: {e}.") from None


READERS: dict[str, Callable[[Path], Iterator[RawRow]]] = {
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
    ".parquet": read_parquet,
}


def read_rows(path: str | Path) -> Iterator[RawRow]:
    """Raw rows of one file, choosing the reader by extension.

    Raises StropError (eagerly, before the first row) if the file is missing, is not a regular
    file, or has an unsupported extension.
    """
    path = Path(path)
    if path.is_dir():
        raise StropError(f"{path}: is a directory; give a data file (.jsonl .json .csv .parquet).")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        supported = ", ".join(READERS)
        raise StropError(f"{path}: unsupported file type '{path.suffix}' (supported: {supported}).")
    if not path.exists():
        raise StropError(f"{path}: no such file.")
    if not path.is_file():
        raise StropError(f"{path}: not a regular file.")
    return reader(path)
