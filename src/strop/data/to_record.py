"""One parsed row of a known format -> a canonical Record, for every kind of data (chat,
text, preference pairs, KTO examples, prompts), or a RowProblem saying what is wrong."""

from __future__ import annotations

from typing import Any

from strop.data.formats import CHAT_FORMATS, RowProblem, _check_turns, _meta, _require, _string
from strop.data.preference_formats import ROW_FORMATS
from strop.data.records import Record


def to_record(
    fmt: str, row: dict[str, Any], origin: str, *, kind: str = "chat", text_field: str = "text"
) -> Record:
    """Convert one parsed row of format ``fmt`` to a Record, or raise RowProblem.

    kind="chat": the result has ``messages``; a ``text`` row is a problem (use stage pt).
    kind="text": the result has ``text``; chat rows are accepted and become one document by
    joining their message contents with "\\n\\n" (roles are not rendered: pre-training sees only
    the words). All chat checks except "has an assistant turn" still apply.
    """
    if kind in ROW_FORMATS:
        if fmt != kind:
            raise RowProblem(f"format {fmt} has no {kind} layout")
        return ROW_FORMATS[kind](row, origin)
    if fmt == "text":
        if kind == "chat":
            raise RowProblem("format text has no conversation; use stage pt")
        text = _string(_require(row, text_field), text_field)
        if not text.strip():
            raise RowProblem(f"{text_field}: empty or whitespace-only")
        return Record(origin, text=text, meta=_meta(row, {text_field}))
    turns, consumed = CHAT_FORMATS[fmt](row)
    _check_turns(turns, kind)
    messages = [msg for _, msg in turns]
    if kind == "text":
        return Record(
            origin, text="\n\n".join(m.content for m in messages), meta=_meta(row, consumed)
        )
    return Record(origin, messages=messages, meta=_meta(row, consumed))
