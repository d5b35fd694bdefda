"""quality: score each record by its perplexity under a language model, store the score in a
field (``quality_ppl`` by default) and optionally remove records outside a range.

Perplexity here is exp(mean next-token cross-entropy) over the record's text (turn contents
joined by newlines, first ``max_length`` tokens). Low perplexity means text the model finds
ordinary, very high perplexity often means garbage (markup debris, broken encodings, random
strings); very low can mean boilerplate or repetition. dedup_near's ``keep: quality`` reads the
score. Models load through strop.models.load.load_model (names, local dirs, .gguf); nothing is
downloaded.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from typing import Any

from pydantic import Field, model_validator

from strop.config.schema import Section
from strop.data.prepare.base import Changed, Removed, Result, Step, texts
from strop.data.records import Record


class QualityParams(Section):
    model: str = "smollm2-135m-instruct"
    """Model name, local HF dir or .gguf file scoring the text."""
    field: str = "quality_ppl"
    max_length: int = Field(512, ge=2)
    batch_size: int = Field(8, ge=1)
    min_ppl: float | None = Field(None, ge=0)
    max_ppl: float | None = Field(None, ge=0)
    dtype: str = "fp32"

    @model_validator(mode="after")
    def _range(self) -> QualityParams:
        if self.min_ppl is not None and self.max_ppl is not None and self.min_ppl > self.max_ppl:
            raise ValueError(f"min_ppl {self.min_ppl} is above max_ppl {self.max_ppl}")
        return self


@lru_cache(maxsize=2)
def _load(name: str, dtype: str) -> tuple[Any, Any]:
    from strop.models.load import load_model

    model, tok, _ = load_model(name, dtype=dtype)
    model.eval()
    return model, tok


def perplexities(
    texts_: list[str], model: Any, tok: Any, max_length: int, batch: int
) -> list[float]:
    """exp(mean token NLL) per text; NaN for texts with fewer than 2 tokens."""
    import torch

    out: list[float] = []
    for i in range(0, len(texts_), batch):
        enc = tok(
            texts_[i : i + batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        logits = logits[:, :-1].float()
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool() & enc["attention_mask"][:, :-1].bool()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, reduction="none"
        )  # [batch, T-1]
        counts = mask.sum(1)
        sums = (nll * mask).sum(1)
        for s, c in zip(sums.tolist(), counts.tolist(), strict=True):
            out.append(math.exp(s / c) if c > 0 else float("nan"))
    return out


class Quality(Step):
    name = "quality"
    Params = QualityParams

    def apply(self, records: list[Record]) -> list[Result]:
        p = self.params
        model, tok = _load(p.model, p.dtype)
        if tok.padding_side != "right":
            tok.padding_side = "right"  # the NLL mask above assumes right padding
        scores = perplexities(
            ["\n".join(texts(r)) for r in records], model, tok, p.max_length, p.batch_size
        )
        out: list[Result] = []
        for rec, ppl in zip(records, scores, strict=True):
            if not math.isnan(ppl):
                if p.min_ppl is not None and ppl < p.min_ppl:
                    out.append(Removed("min_ppl", f"perplexity {ppl:.1f}"))
                    continue
                if p.max_ppl is not None and ppl > p.max_ppl:
                    out.append(Removed("max_ppl", f"perplexity {ppl:.1f}"))
                    continue
            value = round(ppl, 4) if not math.isnan(ppl) else None
            out.append(Changed(replace(rec, meta={**rec.meta, p.field: value}), {"scored": 1}))
        return out
