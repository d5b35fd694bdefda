"""Multiple-choice question files, read in the layouts the benchmarks publish (docs/eval.md).

- strop's own: a header with ``question``, choice columns ``A``, ``B``, ... (or a list field
  ``choices``), ``answer`` and optionally ``subject``; CSV, JSONL or Parquet.
- CMMLU: ``,Question,A,B,C,D,Answer`` (an unnamed index column first, capitalised names).
- C-Eval: ``id,question,A,B,C,D,answer,explanation``.
- MMLU (the original CSVs): no header at all, each row ``question,A,B,C,D,answer-letter``.
- MMLU's Hugging Face export: ``question, subject, choices`` (a list), ``answer`` (an index).

Column names match in any case; index columns (unnamed, ``id``, ``index``) and C-Eval's
``explanation`` are ignored; ``answer`` is a letter or a 0-based index. A CSV file without a
``subject`` column named as the benchmarks name theirs, ``<subject>_test.csv`` (``_dev``,
``_val``) or ``test/<subject>.csv`` (``dev/``, ``val/``), takes its subject from the name, so
per-subject accuracy and same-subject shots work on the published files as they are.
"""

from __future__ import annotations

import ast
import csv
import itertools
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from strop.errors import StropError

LETTERS = string.ascii_uppercase
NAMED = ("question", "answer", "subject", "choices")
SPLITS = ("test", "dev", "val", "validation", "train")
LAYOUT_HELP = (
    "expected a header naming 'question', the choices (columns A, B, ... or 'choices') and "
    "'answer', in any case (an unnamed or 'id' index column is ignored), or MMLU's headerless "
    "rows question,A,B,C,D,answer-letter"
)


@dataclass
class MCExample:
    origin: str  # file:line
    question: str
    choices: list[str]
    answer: int  # index into choices
    subject: str | None = None


def canonical(name: object) -> str | None:
    """The column a header cell names (question, answer, subject, choices, a choice letter),
    or None for a column to ignore; in any case and spacing."""
    key = str(name).strip().lstrip("\ufeff")
    if key.lower() in NAMED:
        return key.lower()
    if len(key) == 1 and key.upper() in LETTERS:
        return key.upper()
    return None


def _normalise(row: dict, origin: str) -> dict:
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = canonical(key)
        if name is None:
            continue
        if name in out:
            raise StropError(f"{origin}: two fields name the column '{name}'")
        out[name] = value
    return out


def parse_row(row: dict, origin: str, subject: str | None = None) -> MCExample:
    if not isinstance(row, dict):
        raise StropError(f"{origin}: expected an object with question/choices/answer")
    row = _normalise(row, origin)
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise StropError(f"{origin}: missing or empty 'question'")
    choices = _choices(row, origin)
    index = _answer(row.get("answer"), len(choices), origin)
    value = row.get("subject")
    if value not in (None, ""):
        subject = str(value).strip()
    return MCExample(origin, question, choices, index, subject)


def _choices(row: dict, origin: str) -> list[str]:
    if row.get("choices") not in (None, ""):
        choices = row["choices"]
        if isinstance(choices, tuple):
            choices = list(choices)
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise StropError(f"{origin}: 'choices' must be a list of strings")
    else:
        choices = []
        for letter in LETTERS:
            value = row.get(letter)
            if value is None or (isinstance(value, str) and not value.strip()):
                break
            choices.append(str(value))
        later = [c for c in LETTERS[len(choices) + 1 :] if row.get(c) not in (None, "")]
        if later:
            raise StropError(
                f"{origin}: choice column {LETTERS[len(choices)]} is empty but {later[0]} is set"
            )
    if len(choices) < 2:
        raise StropError(f"{origin}: need at least 2 choices (columns A, B, ... or 'choices')")
    if len(choices) > len(LETTERS):
        raise StropError(f"{origin}: at most {len(LETTERS)} choices")
    return list(choices)


def _answer(answer: Any, n_choices: int, origin: str) -> int:
    """A letter ("B", "b") or a 0-based index (1, "1"); the answer's position in the choices."""
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    if isinstance(answer, bool) or answer is None or answer == "":
        raise StropError(f"{origin}: missing 'answer' (a letter or a 0-based index)")
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        index = LETTERS.find(answer.strip().upper())
    else:
        raise StropError(f"{origin}: 'answer' must be a letter or a 0-based index, got {answer!r}")
    if not 0 <= index < n_choices:
        raise StropError(f"{origin}: answer {answer!r} is out of range for {n_choices} choices")
    return index


def subject_from_name(path: Path) -> str | None:
    """``x/abstract_algebra_test.csv`` (MMLU, C-Eval) or ``x/test/agronomy.csv`` (CMMLU):
    the subject; None for any other name."""
    stem = path.stem
    for split in SPLITS:
        if stem.endswith(f"_{split}") and len(stem) > len(split) + 1:
            return stem[: -len(split) - 1]
    return stem if path.parent.name.lower() in SPLITS else None


# -- CSV ----------------------------------------------------------------------------------------


def _headerless(first: list[str]) -> bool:
    """MMLU's rows: question, two or more choices, and a letter naming one of them last."""
    letter = first[-1].strip().upper() if first else ""
    return len(first) >= 4 and len(letter) == 1 and letter in LETTERS[: len(first) - 2]


def _csv_columns(where: str, first: list[str]) -> tuple[list[str | None], bool]:
    """(canonical name per column, whether ``first`` is a data row) or a StropError that names
    the file (``where``: file:line of the first row) and the column at fault."""
    names = [canonical(h) for h in first]
    if "question" not in names:
        if _headerless(first):
            return ["question", *LETTERS[: len(first) - 2], "answer"], True
        shown = ", ".join(repr(h) for h in first[:12]) or "none"
        raise StropError(f"{where}: no 'question' column in the header ({shown}); {LAYOUT_HELP}.")
    for name in dict.fromkeys(n for n in names if n is not None):
        if names.count(name) > 1:
            cols = [repr(h) for h, n in zip(first, names, strict=True) if n == name]
            raise StropError(f"{where}: columns {' and '.join(cols)} both name '{name}'.")
    if "answer" not in names:
        raise StropError(
            f"{where}: no 'answer' column in the header (a letter or a 0-based index per row; "
            "C-Eval's test split publishes no answers, use its val split); "
            f"{LAYOUT_HELP}."
        )
    if "choices" not in names and not {"A", "B"} <= set(names):
        raise StropError(
            f"{where}: no choice columns in the header: expected 'A' and 'B' (then C, D, ...) "
            f"or a list column 'choices'; {LAYOUT_HELP}."
        )
    return names, False


def _csv_lines(path: Path, reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, fields); blank lines skipped; broken CSV named by line."""
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise StropError(f"{path}:{start}: invalid CSV ({e}).") from None
        except UnicodeDecodeError:
            # decoding runs ahead of the CSV reader, so no exact line can be named
            raise StropError(
                f"{path}: not UTF-8 text; save it as UTF-8 (e.g. iconv -f GBK -t UTF-8)."
            ) from None
        line, start = start, reader.line_num + 1
        if fields and any(f.strip() for f in fields):
            yield line, fields


def load_csv(path: Path) -> list[MCExample]:
    subject = subject_from_name(path)
    out: list[MCExample] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = _csv_lines(path, csv.reader(fh))
        head = next(rows, None)
        if head is None:
            return out
        names, first_is_data = _csv_columns(f"{path}:{head[0]}", head[1])
        if "subject" in names:
            subject = None  # the rows say
        width = (len(names), "the first row" if first_is_data else "the header")
        for line, fields in itertools.chain([head] if first_is_data else [], rows):
            out.append(_csv_example(f"{path}:{line}", fields, names, width, subject))
    return out


def _csv_example(
    origin: str,
    fields: list[str],
    names: list[str | None],
    width: tuple[int, str],
    subject: str | None,
) -> MCExample:
    if len(fields) != width[0]:
        raise StropError(
            f"{origin}: expected {width[0]} fields (as in {width[1]}), got {len(fields)}"
        )
    row = {n: v for n, v in zip(names, fields, strict=True) if n is not None}
    choices = row.get("choices")
    if isinstance(choices, str) and choices.strip().startswith("["):
        # a list written into a cell: JSON, or Python's repr as pandas writes it
        try:
            row["choices"] = json.loads(choices)
        except json.JSONDecodeError:
            try:
                row["choices"] = ast.literal_eval(choices)
            except (ValueError, SyntaxError):
                raise StropError(f"{origin}: 'choices' is not a list") from None
    return parse_row(row, origin, subject)


# -- JSONL / Parquet ------------------------------------------------------------------------------


def jsonl_values(path: Path):
    """Yield ``("file:line", parsed value)`` for every non-blank line of a JSONL file; invalid
    JSON or UTF-8 stops with the line named."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark is not part of the JSON
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise StropError(
                    f"{path}:{lineno}: not UTF-8 text (byte {e.start}); save the file as UTF-8"
                ) from None
            except json.JSONDecodeError as exc:
                raise StropError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            yield f"{path}:{lineno}", value


def load_parquet(path: Path) -> list[MCExample]:
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise StropError(f"{path}: cannot read the parquet file: {e}.") from None
    return [parse_row(row, f"{path}:row {i}") for i, row in enumerate(rows, 1)]


def load_mc_file(path: str | Path) -> list[MCExample]:
    """Every question of a .csv, .jsonl or .parquet file; a bad row raises naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise StropError(f"{path}: no such file." if not path.exists() else f"{path}: not a file.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path)
    if suffix == ".parquet":
        return load_parquet(path)
    return [parse_row(row, origin) for origin, row in jsonl_values(path)]
