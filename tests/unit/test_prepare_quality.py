"""quality: perplexity under a (tiny, random) model as a field, a range filter on it, and
agreement with a plain per-text computation."""

from __future__ import annotations

import math

import torch

from strop.data.prepare import clean_records
from strop.data.prepare.quality import _load
from strop.data.records import Message, Record


def chat(user: str, answer: str, i: int) -> Record:
    return Record(f"t:{i}", messages=[Message("user", user), Message("assistant", answer)])


RECS = [
    chat("alpha beta", "gamma delta", 0),
    chat("one two three four five six seven", "eight nine ten", 1),
    chat("x", "y", 2),
]


def reference_ppl(text: str) -> float:
    """One text, no padding: exp of the mean next-token cross-entropy."""
    model, tok = _load("tiny-llama", "fp32")
    ids = tok(text, return_tensors="pt", truncation=True, max_length=512)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


def test_scores_match_an_unbatched_reference_and_are_stored():
    kept, removed = clean_records(RECS, [("quality", {"model": "tiny-llama", "batch_size": 2})])
    assert not removed
    for rec in kept:
        text = "\n".join(m.content for m in rec.messages)
        assert math.isclose(rec.meta["quality_ppl"], reference_ppl(text), rel_tol=1e-3)


def test_range_filter_and_field_name():
    scores = [
        r.meta["q"]
        for r in clean_records(RECS, [("quality", {"model": "tiny-llama", "field": "q"})]).kept
    ]
    cut = sorted(scores)[1]
    result = clean_records(RECS, [("quality", {"model": "tiny-llama", "max_ppl": cut})])
    assert len(result.kept) == 2 and [r["rule"] for r in result.removed] == ["max_ppl"]
