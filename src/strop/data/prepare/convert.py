"""convert: change records' layout, and the file format the cleaned data is written in.

``to`` names the target:

- ``messages`` / ``sharegpt`` / ``alpaca``: chat conversations, written in that file format.
  A preference pair becomes its prompt + chosen answer, a KTO row its prompt + completion if
  desirable (undesirable rows are removed: there is no conversation to imitate), a text record
  is removed. alpaca needs alternating user/assistant turns ending with an answer (an optional
  system first); other conversations are removed with the reason.
- ``text``: every turn's content joined with blank lines (continued pre-training).
- ``kto``: a preference pair becomes two rows, chosen (label true) and rejected (label false);
  a chat conversation becomes its last answer (label true) after the turns before it.
- ``preference``: keeps preference pairs only (other layouts cannot make a pair by themselves).

Whatever the target, a preference pair whose chosen equals rejected teaches nothing and is
reported (rule ``identical_pair``) and removed unless ``drop_identical_pairs`` is false.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from strop.config.schema import Section
from strop.data.prepare.base import Changed, Expanded, Noted, Removed, Result, Step
from strop.data.records import Message, Record

Target = Literal["messages", "sharegpt", "alpaca", "text", "kto", "preference"]
FILE_FORMATS = ("sharegpt", "alpaca")  # targets that also choose the output file format


class ConvertParams(Section):
    to: Target
    drop_identical_pairs: bool = True


def _same(a: list[Message] | None, b: list[Message] | None) -> bool:
    norm = [(m.role, m.content.strip()) for m in a or []]
    return norm == [(m.role, m.content.strip()) for m in b or []]


def alpaca_problem(msgs: list[Message]) -> str | None:
    """Why a conversation cannot be written as alpaca rows, or None."""
    body = msgs[1:] if msgs and msgs[0].role == "system" else msgs
    if len(body) < 2 or len(body) % 2:
        return "alpaca needs user/assistant pairs"
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m.role != want:
            return f"alpaca needs alternating user/assistant turns, turn {i} is {m.role}"
    return None


def to_chat(rec: Record) -> Record | Removed:
    layout = rec.layout
    if layout == "chat":
        return rec
    if layout == "preference":
        return Record(rec.origin, messages=[*(rec.messages or []), *rec.chosen], meta=rec.meta)
    if layout == "kto":
        if not rec.label:
            return Removed("undesirable", "a KTO row labelled undesirable has no chat form")
        return Record(rec.origin, messages=[*(rec.messages or []), *rec.completion], meta=rec.meta)
    return Removed("no_conversation", "a text record has no conversation")


def _last_answer_split(msgs: list[Message]) -> tuple[list[Message], list[Message]] | None:
    last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=None)
    return None if last is None else (msgs[:last], msgs[last:])


class Convert(Step):
    name = "convert"
    Params = ConvertParams

    def apply(self, records: list[Record]) -> list[Result]:
        return [self._one(r) for r in records]

    def _one(self, rec: Record) -> Result:
        to = self.params.to
        if rec.layout == "preference" and _same(rec.chosen, rec.rejected):
            if self.params.drop_identical_pairs:
                return Removed("identical_pair", "chosen equals rejected")
            if to in ("preference",):
                return Noted({"identical_pair": 1})
        if to == "preference":
            if rec.layout != "preference":
                return Removed("not_a_pair", f"a {rec.layout} record is not a preference pair")
            return None
        if to == "kto":
            return self._to_kto(rec)
        if to == "text":
            if rec.text is not None:
                return None
            parts = [
                m.content
                for m in [*(rec.messages or []), *(rec.chosen or []), *(rec.completion or [])]
            ]
            return Changed(Record(rec.origin, text="\n\n".join(parts), meta=rec.meta))
        chat = to_chat(rec)
        if isinstance(chat, Removed):
            return chat
        if to == "alpaca" and (problem := alpaca_problem(chat.messages or [])):
            return Removed("not_alpaca", problem)
        return None if chat is rec else Changed(chat)

    def _to_kto(self, rec: Record) -> Result:
        if rec.layout == "kto":
            return None
        if rec.layout == "preference":
            prompt = rec.messages or []
            good = Record(
                f"{rec.origin}#chosen",
                messages=prompt,
                completion=rec.chosen,
                label=True,
                meta=rec.meta,
            )
            bad = Record(
                f"{rec.origin}#rejected",
                messages=prompt,
                completion=rec.rejected,
                label=False,
                meta=rec.meta,
            )
            return Expanded([good, bad], "pair_to_kto")
        if rec.layout == "chat":
            split = _last_answer_split(rec.messages or [])
            if split is None:
                return Removed("no_answer", "no assistant turn to use as the completion")
            prompt, completion = split
            return Changed(replace(rec, messages=prompt, completion=completion, label=True))
        return Removed("no_conversation", "a text record has no conversation")
