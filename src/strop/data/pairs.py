"""Preference pairs and KTO examples → training rows of two documents each.

A pair row holds the chosen conversation then the rejected one, as two documents: one forward
pass scores both (packed, with per-document attention, so neither sees the other) and the
objective reads per-document log-probs through ``strop_doc_index`` (strop.data.batching).
Loss masks are the SFT masks: the tokenizer's own template, assistant turns of the response
(end-of-turn token included) carry the targets, the prompt never does.

A KTO row holds the example and a *mismatched* example (this prompt with the next record's
completion): the KTO paper estimates its KL reference point from such pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strop.data.batching import Row
from strop.data.records import Message, Record
from strop.data.render import IGNORE, Sample, ensure_chat_template, tokenize_chat


@dataclass
class PairStats:
    rows: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    dropped_too_long: int = 0
    tokens: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.rows} rows, {self.tokens} tokens; truncated {self.truncated}, dropped: "
            f"{self.dropped_no_target} with a response truncated away, "
            f"{self.dropped_too_long} too long"
        )


def tokenize_response(
    tokenizer, prompt: list[Message], response: list[Message], origin: str
) -> Sample:
    """prompt + response rendered with the chat template; targets only in the response."""
    record = Record(origin, messages=[*prompt, *response])
    return tokenize_chat(tokenizer, record, "assistant", first_turn=len(prompt))


def _fit(s: Sample, max_length: int, truncation: str, stats: PairStats) -> Sample | None:
    if len(s.input_ids) > max_length:
        if truncation == "drop":
            stats.dropped_too_long += 1
            stats.dropped.append((s.origin, f"{len(s.input_ids)} tokens > max_length"))
            return None
        s = Sample(s.input_ids[:max_length], s.labels[:max_length], s.origin)
        stats.truncated += 1
    if not any(y != IGNORE for y in s.labels[1:]):
        stats.dropped_no_target += 1
        stats.dropped.append((s.origin, "response truncated away (no target token left)"))
        return None
    return s


def _row(first: Sample, second: Sample, values: dict[str, float]) -> Row:
    return Row(
        first.input_ids + second.input_ids,
        first.labels + second.labels,
        [len(first.input_ids), len(second.input_ids)],
        values,
    )


def _two_document_rows(tokenizer, records, max_length, truncation, documents) -> tuple:
    """Rows of two documents: ``documents(i, record) -> (first, second, values)``. A row whose
    first or second document loses its targets to truncation is dropped and counted."""
    ensure_chat_template(tokenizer)
    rows, stats = [], PairStats()
    for i, rec in enumerate(records):
        first, second, values = documents(i, rec)
        first = _fit(first, max_length, truncation, stats)
        second = _fit(second, max_length, truncation, stats) if first else None
        if first is not None and second is not None:
            rows.append(_row(first, second, values))
    stats.rows = len(rows)
    stats.tokens = sum(len(r.input_ids) for r in rows)
    return rows, stats


def preference_rows(
    tokenizer, records: list[Record], max_length: int, truncation: str = "right"
) -> tuple[list[Row], PairStats]:
    """One row per pair: [chosen, rejected]; ``values`` holds the optional reward margin."""

    def documents(i: int, rec: Record):
        return (
            tokenize_response(tokenizer, rec.messages, rec.chosen, f"{rec.origin}:chosen"),
            tokenize_response(tokenizer, rec.messages, rec.rejected, f"{rec.origin}:rejected"),
            {"margin": float(rec.meta.get("margin", 0.0))},
        )

    return _two_document_rows(tokenizer, records, max_length, truncation, documents)


def kto_rows(
    tokenizer, records: list[Record], max_length: int, truncation: str = "right"
) -> tuple[list[Row], PairStats]:
    """One row per example: [prompt_i + completion_i, prompt_i + completion_(i+1)], with
    ``values = {"label": 1.0 desirable | 0.0 undesirable}``."""

    def documents(i: int, rec: Record):
        other = records[(i + 1) % len(records)]
        return (
            tokenize_response(tokenizer, rec.messages, rec.completion, rec.origin),
            tokenize_response(tokenizer, rec.messages, other.completion, f"{rec.origin}:kl"),
            {"label": float(rec.label)},
        )

    return _two_document_rows(tokenizer, records, max_length, truncation, documents)
