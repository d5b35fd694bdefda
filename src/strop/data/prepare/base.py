"""What every prepare step shares: the step interface, what a step may say about one record,
and helpers that read or rewrite all the text a record holds whatever its layout.

A step sees one chunk of records at a time (``apply``) and answers, per record, with one of:

- ``None``: kept unchanged; ``Noted(notes)``: kept unchanged, with counters for the report;
- ``Changed(record, notes)``: kept, rewritten (``notes`` are counters for the report, e.g. PII
  types found);
- ``Removed(rule, detail)``: removed; ``rule`` names the rule in the report and quarantine;
- ``Expanded(records)``: one record became several (e.g. a preference pair into two KTO rows);
- ``Keyed(key, notes)``: only for stateful steps (dedup): a picklable key that the main process
  compares against what it has seen, in input order (``decide``).

Stateless work runs in worker processes; only ``decide`` runs in the main process, in input
order, which is what makes the output identical whatever the number of workers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from strop.config.schema import Section
from strop.data.records import Message, Record


@dataclass
class Changed:
    record: Record
    notes: dict[str, int] = field(default_factory=dict)


@dataclass
class Noted:
    """Kept unchanged, with counters for the report (e.g. the language a filter detected)."""

    notes: dict[str, int]


@dataclass
class Removed:
    rule: str
    detail: str = ""
    notes: dict[str, int] = field(default_factory=dict)


@dataclass
class Expanded:
    records: list[Record]
    rule: str = "expanded"


@dataclass
class Keyed:
    key: Any
    notes: dict[str, int] = field(default_factory=dict)


Result = Changed | Noted | Removed | Expanded | Keyed | None


@dataclass
class Decision:
    """What a stateful step decided about one record in the main process."""

    removed: Removed | None = None
    pending: bool = False  # decided only once the whole input has been seen (keep: longest)
    duplicate_of: str | None = None  # origin of the record kept in its place


class Step:
    """Base class. Subclasses set ``name``, ``Params`` and implement ``apply``; stateful ones
    also set ``stateful = True`` and implement ``decide`` (and ``finish`` when deferred)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Section]] = Section
    stateful: ClassVar[bool] = False

    def __init__(self, params: Section) -> None:
        self.params = params

    def apply(self, records: list[Record]) -> list[Result]:
        raise NotImplementedError

    # -- stateful steps only (main process) ---------------------------------------------------
    def decide(self, key: Any, origin: str, info: dict[str, Any]) -> Decision:
        raise NotImplementedError

    def finish(self) -> dict[int, Decision]:
        """Deferred decisions, once everything has been seen: the pipeline's record id ->
        decision (records not named are kept)."""
        return {}

    def report(self) -> dict[str, Any]:
        """Extra step-specific findings for report.json (examples, per-item hits...)."""
        return {}


# -- text access ----------------------------------------------------------------------------------

PARTS = ("messages", "chosen", "rejected", "completion")


def turns(rec: Record) -> list[tuple[str, Message]]:
    """Every message of a record with the part it belongs to (messages, chosen, ...)."""
    out: list[tuple[str, Message]] = []
    for part in PARTS:
        msgs = getattr(rec, part)
        if msgs:
            out.extend((part, m) for m in msgs)
    return out


def texts(rec: Record, roles: tuple[str, ...] | None = None) -> list[str]:
    """The record's text pieces: the document for text records, else message contents (of
    ``roles`` only, when given), in ``turns`` order."""
    if rec.text is not None:
        return [rec.text]
    # every step calls this several times per record: no (part, message) pairs, no getattr
    out: list[str] = []
    for msgs in (rec.messages, rec.chosen, rec.rejected, rec.completion):
        if msgs:
            if roles is None:
                out += [m.content for m in msgs]
            else:
                out += [m.content for m in msgs if m.role in roles]
    return out


def response_texts(rec: Record) -> list[str]:
    """What the model is trained to say: assistant turns, chosen/rejected/completion."""
    if rec.text is not None:
        return [rec.text]
    out = [m.content for m in rec.messages or [] if m.role == "assistant"]
    for part in ("chosen", "rejected", "completion"):
        out.extend(m.content for m in getattr(rec, part) or [] if m.role == "assistant")
    return out


def prompt_texts(rec: Record) -> list[str]:
    """The question side: preference/kto prompts, or a chat's turns before its last answer."""
    if rec.text is not None:
        return [rec.text]
    msgs = rec.messages or []
    if rec.layout == "chat":
        last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=len(msgs))
        msgs = msgs[:last]
    return [m.content for m in msgs]


def char_length(rec: Record) -> int:
    return sum(len(t) for t in texts(rec))


def map_text(rec: Record, fn: Callable[[str], str]) -> Record | None:
    """Apply ``fn`` to every text piece; a new Record if anything changed, else None."""
    if rec.text is not None:
        new = fn(rec.text)
        return None if new == rec.text else replace(rec, text=new)
    changes: dict[str, list[Message]] = {}
    for part in PARTS:
        msgs = getattr(rec, part)
        if not msgs:
            continue
        new_msgs = [Message(m.role, fn(m.content)) for m in msgs]
        if any(a.content != b.content for a, b in zip(msgs, new_msgs, strict=True)):
            changes[part] = new_msgs
    return replace(rec, **changes) if changes else None


# -- tokens for n-grams ---------------------------------------------------------------------------

# Han, kana, hangul and CJK compatibility blocks: one token per character, since CJK text has no
# spaces between words and a character is the unit n-grams over it are built from.
CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
CJK_RE = re.compile(f"[{CJK_CLASS}]")
TOKEN_RE = re.compile(f"[{CJK_CLASS}]|[^\\W_{CJK_CLASS}]+")


def ascii_runs_table(keep: Callable[[str], bool]) -> dict[int, str]:
    """A ``str.translate`` table mapping the ASCII characters ``keep`` accepts to lower case and
    every other one to a space: for ASCII text, ``text.translate(table).split()`` gives the
    lower-cased runs of kept characters about twice as fast as a regex."""
    return str.maketrans({chr(c): chr(c).lower() if keep(chr(c)) else " " for c in range(128)})


# For ASCII text the tokens are the runs of letters and digits, lower-cased.
ASCII_TOKENS = ascii_runs_table(str.isalnum)


def ngram_tokens(text: str) -> list[str]:
    """Lower-cased words, with each CJK character a token of its own."""
    if text.isascii():
        return text.translate(ASCII_TOKENS).split()
    return TOKEN_RE.findall(text.lower())
