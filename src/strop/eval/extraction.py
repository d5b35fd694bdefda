"""Scoring for structured (JSON) extraction tasks such as the quickstart's corporate events.

A prediction is the raw text a model generated; the first balanced ``{...}`` in it that parses
as a JSON object is taken as the answer (so Markdown fences and chatter around it are fine).
Each field is compared with the gold value: strings are equal after ``strip()``, ``None`` only
equals ``None``, anything else must be equal as JSON values. Invalid JSON counts as all wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

FIELDS = ("company", "stock_code", "event_type", "date", "amount", "counterparty_or_person")


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the ``}`` closing the ``{`` at ``start``, honouring JSON strings."""
    depth, in_str, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def parse_json_object(text: str) -> dict | None:
    """The first balanced ``{...}`` in ``text`` that parses to a JSON object, else ``None``."""
    if not isinstance(text, str):
        return None
    start = text.find("{")
    while start != -1:
        end = _balanced_end(text, start)
        if end is not None:
            try:
                value = json.loads(text[start:end])
            except ValueError:
                value = None
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


def _field_equal(pred, gold) -> bool:
    if gold is None or pred is None:
        return pred is None and gold is None
    if isinstance(gold, str) and isinstance(pred, str):
        return pred.strip() == gold.strip()
    if isinstance(pred, bool) != isinstance(gold, bool):
        return False
    return pred == gold


@dataclass
class ExtractionScores:
    n: int
    valid_json: float
    exact_match: float
    field_accuracy: float
    per_field: dict[str, float] = field(default_factory=dict)
    event_type_accuracy: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def score_extractions(
    predictions: list[str], references: list[str], fields: tuple[str, ...] = FIELDS
) -> ExtractionScores:
    """Score model outputs against gold JSON strings (see the module docstring for the rules)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references; "
            "they must pair up one to one"
        )
    n = len(references)
    correct = dict.fromkeys(fields, 0)
    valid = exact = 0
    for i, (pred_text, ref_text) in enumerate(zip(predictions, references, strict=True)):
        gold = parse_json_object(ref_text)
        if gold is None:
            raise ValueError(f"reference {i} is not a JSON object: {ref_text[:80]!r}")
        pred = parse_json_object(pred_text)
        if pred is None:
            continue
        valid += 1
        ok = [f for f in fields if _field_equal(pred.get(f), gold.get(f))]
        for f in ok:
            correct[f] += 1
        exact += len(ok) == len(fields)
    if n == 0:
        return ExtractionScores(0, 0.0, 0.0, 0.0, dict.fromkeys(fields, 0.0), 0.0)
    per_field = {f: correct[f] / n for f in fields}
    return ExtractionScores(
        n=n,
        valid_json=valid / n,
        exact_match=exact / n,
        field_accuracy=sum(correct.values()) / (n * len(fields)),
        per_field=per_field,
        event_type_accuracy=per_field.get("event_type", 0.0),
    )


def format_scores_table(rows: dict[str, ExtractionScores]) -> str:
    """A metrics-by-model text table, e.g. ``{"base": s1, "tuned": s2}`` -> two value columns."""
    names = list(rows)
    fields: list[str] = []
    for s in rows.values():
        fields += [f for f in s.per_field if f not in fields]
    lines: list[tuple[str, list[str]]] = [("n", [str(rows[m].n) for m in names])]
    for metric in ("valid_json", "exact_match", "field_accuracy", "event_type_accuracy"):
        lines.append((metric, [f"{getattr(rows[m], metric):.3f}" for m in names]))
    for f in fields:
        vals = [rows[m].per_field.get(f) for m in names]
        lines.append((f"  {f}", ["-" if v is None else f"{v:.3f}" for v in vals]))
    label_w = max(len("metric"), *(len(label) for label, _ in lines))
    col_w = [max(len(m), 5, *(len(vals[j]) for _, vals in lines)) for j, m in enumerate(names)]
    header = "metric".ljust(label_w) + "".join(
        f"  {m:>{w}}" for m, w in zip(names, col_w, strict=True)
    )
    out = [header, "-" * len(header)]
    for label, vals in lines:
        out.append(
            label.ljust(label_w) + "".join(f"  {v:>{w}}" for v, w in zip(vals, col_w, strict=True))
        )
    return "\n".join(out)
