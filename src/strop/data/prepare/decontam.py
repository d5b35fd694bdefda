"""decontaminate: remove training records that contain evaluation items, so scores stay honest.

Each eval item becomes a set of word n-grams (CJK: character n-grams, as everywhere in
prepare); a training record is contaminated by an item when it contains at least ``threshold``
of that item's n-grams (an item shorter than n tokens is one n-gram of all its tokens). The
GPT-3 paper (Brown et al. 2020, appendix C) used 13-gram overlap for the same purpose; the
default n=8 also catches paraphrased short questions. The report lists the eval items hit and
how many training records hit each.

Eval files are read by strop's readers (any format the data layer reads); rows whose format is
not recognised (e.g. multiple-choice CSVs) contribute all their string fields.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from strop.config.schema import Section
from strop.data.formats import RowProblem, classify
from strop.data.prepare.base import Removed, Result, Step, ngram_tokens, prompt_texts, texts
from strop.data.readers import read_rows
from strop.data.records import Record
from strop.data.to_record import to_record
from strop.errors import StropError


class DecontamParams(Section):
    eval_files: list[str]
    """Evaluation sets (paths) whose items must not appear in the training data."""
    n: int = Field(8, ge=1)
    threshold: float = Field(0.5, gt=0, le=1)
    """Share of an eval item's n-grams a training record must contain to be removed."""
    eval_part: Literal["prompt", "all"] = "prompt"
    """Which text of an eval item counts: its prompt (the question; answers are often short and
    generic) or everything."""


def _gram_hash(gram: tuple[str, ...]) -> int:
    data = "\x1f".join(gram).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def ngram_set(text: str, n: int) -> set[int]:
    toks = ngram_tokens(text)
    if not toks:
        return set()
    if len(toks) < n:
        return {_gram_hash(tuple(toks))}
    return {_gram_hash(tuple(toks[i : i + n])) for i in range(len(toks) - n + 1)}


def _row_text(row: dict[str, Any], origin: str, part: str) -> str:
    fmt = classify(row)
    kind = {"text": "text", "preference": "preference", "kto": "kto"}.get(fmt or "", "chat")
    if fmt is not None:
        try:
            rec = to_record(fmt, row, origin, kind=kind)
            return "\n".join(prompt_texts(rec) if part == "prompt" else texts(rec))
        except (RowProblem, KeyError, TypeError):
            pass
    return "\n".join(v for v in row.values() if isinstance(v, str))


class EvalIndex:
    """n-gram -> eval items containing it, plus each item's n-gram count."""

    def __init__(self, files: list[str], n: int, part: str) -> None:
        self.origins: list[str] = []
        self.sizes: list[int] = []
        self.grams: dict[int, list[int]] = {}
        for path in files:
            if not Path(path).exists():
                raise StropError(f"decontaminate: eval file not found: {path}")
            for raw in read_rows(path):
                if raw.row is None:
                    continue
                grams = ngram_set(_row_text(raw.row, raw.origin, part), n)
                if not grams:
                    continue
                item = len(self.origins)
                self.origins.append(raw.origin)
                self.sizes.append(len(grams))
                for g in grams:
                    self.grams.setdefault(g, []).append(item)
        if not self.origins:
            raise StropError(f"decontaminate: no eval items found in {', '.join(files)}")

    def hits(self, grams: set[int], threshold: float) -> list[tuple[int, float]]:
        found: Counter[int] = Counter()
        for g in grams:
            for item in self.grams.get(g, ()):
                found[item] += 1
        return sorted(
            (item, c / self.sizes[item])
            for item, c in found.items()
            if c / self.sizes[item] >= threshold
        )


class Decontaminate(Step):
    name = "decontaminate"
    Params = DecontamParams

    def __init__(self, params: DecontamParams) -> None:
        super().__init__(params)
        self.index = EvalIndex(params.eval_files, params.n, params.eval_part)

    def apply(self, records: list[Record]) -> list[Result]:
        out: list[Result] = []
        for rec in records:
            grams = ngram_set("\n".join(texts(rec)), self.params.n)
            hits = self.index.hits(grams, self.params.threshold)
            if not hits:
                out.append(None)
                continue
            item, share = max(hits, key=lambda h: h[1])
            detail = f"contains {share:.0%} of eval item {self.index.origins[item]}"
            if len(hits) > 1:
                detail += f" (and {len(hits) - 1} more)"
            notes = {f"hit:{self.index.origins[i]}": 1 for i, _ in hits}
            out.append(Removed("eval_overlap", detail, notes))
        return out
