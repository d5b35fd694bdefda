"""filter: remove records that would teach the model something unwanted. Every rule is off
unless configured (except ``empty``); a record is removed by the first rule it fails, and the
report counts removals per rule.

Per-turn rules check each turn whose role is in ``roles`` (text records: the document);
repetition, symbol and digit ratios check what the model learns to say (assistant turns,
chosen/rejected/completion, documents); ``languages`` looks at all the text of a record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from strop.config.schema import Section
from strop.data.prepare.base import (
    Changed,
    Noted,
    Removed,
    Result,
    Step,
    ngram_tokens,
    response_texts,
    texts,
    turns,
)
from strop.data.prepare.lang import (
    RANGES,
    SAMPLE_CHARS,
    SCRIPTS,
    counts_of_row,
    detect_language,
    script_counts,
)
from strop.data.records import Record

Role = Literal["system", "user", "assistant", "tool"]

REFUSALS = [
    r"\bas an ai(?: language)? model\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? (?:but )?i (?:can(?:not|'t)|am unable to|won't)\b",
    r"\bi can(?:not|'t) (?:help|assist|provide|comply) with (?:that|this|your request)\b",
    r"\bi(?:'m| am) (?:not able|unable) to (?:help|assist|provide|comply|fulfil)",
    r"作为(?:一个)?(?:ai|人工智能)(?:语言模型|助手|模型)",
    r"(?:抱歉|对不起)[，,]?\s*我(?:无法|不能)",
    r"我无法(?:提供|回答|协助|帮助|满足)",
]
# Every built-in refusal pattern contains one of these; a plain substring test skips the regex
# for the vast majority of answers.
REFUSAL_WORDS = (
    "sorry",
    "afraid",
    "cannot",
    "can't",
    "unable",
    "not able",
    "as an ai",
    "无法",
    "不能",
    "作为",
)
MIN_RATIO_CHARS = 20  # ratios of shorter turns say little ("42!" is 33% symbols)
MIN_NGRAMS = 10  # repetition ratios need some n-grams to be meaningful


class FilterParams(Section):
    roles: list[Role] = ["user", "assistant"]
    """Turns the per-turn length rules check."""
    empty: bool = True
    """Remove records with an empty or whitespace-only checked turn."""
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    tokenizer: str | None = None
    """Model name or dir whose tokenizer counts tokens (needed by the *_tokens rules)."""
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    """Per checked turn."""
    max_total_tokens: int | None = Field(None, ge=1)
    """All turns of a record together (e.g. the training max_length)."""
    ngram_n: int = Field(3, ge=1)
    max_ngram_repeat: float | None = Field(None, ge=0, le=1)
    """Largest share of a response's word n-grams (CJK: character n-grams) that repeat an
    earlier n-gram of the same response."""
    max_line_repeat: float | None = Field(None, ge=0, le=1)
    """Largest share of a response's non-empty lines that repeat an earlier line."""
    max_symbol_ratio: float | None = Field(None, ge=0, le=1)
    """Largest share of non-space characters that are neither letters nor digits."""
    max_digit_ratio: float | None = Field(None, ge=0, le=1)
    banned_phrases: list[str] = Field(default_factory=list)
    """Case-insensitive substrings; a record containing one anywhere is removed."""
    banned_regexes: list[str] = Field(default_factory=list)
    languages: list[str] | None = None
    """Keep only these languages (en, zh, ja, ko, fr, de, es, pt, it, nl, ru, ...)."""
    keep_undetermined: bool = True
    """Keep records too short to tell their language ("und")."""
    annotate_language: bool = False
    """Write the detected language into the record's ``language`` field."""
    refusals: bool = False
    """Remove records whose responses are refusals or AI boilerplate ("As an AI language
    model", "I'm sorry, but I can't", "作为一个AI语言模型", "抱歉，我无法")."""
    refusal_patterns: list[str] = Field(default_factory=list)
    """Extra refusal regexes (case-insensitive), added to the built-in ones."""

    @field_validator("banned_regexes", "refusal_patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None
        return value

    @model_validator(mode="after")
    def _tokenizer_given(self) -> FilterParams:
        rules = [k for k in ("min_tokens", "max_tokens", "max_total_tokens") if getattr(self, k)]
        if rules and not self.tokenizer:
            raise ValueError(f"{', '.join(rules)}: set tokenizer (a model name or dir) too")
        return self


@lru_cache(maxsize=4)
def load_tokenizer_by_name(name: str) -> Any:
    from strop.hub import resolve_model
    from strop.models.load import load_tokenizer

    return load_tokenizer(resolve_model(name))


def repeat_ratio(items: list) -> float:
    """Share of items equal to an earlier item."""
    return 1 - len(set(items)) / len(items) if items else 0.0


def ngram_repeat(text: str, n: int) -> float | None:
    toks = ngram_tokens(text)
    grams = list(zip(*(toks[i:] for i in range(n)), strict=False))  # n-grams at C speed
    return repeat_ratio(grams) if len(grams) >= MIN_NGRAMS else None


def line_repeat(text: str) -> float | None:
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    return repeat_ratio(lines) if len(lines) >= 3 else None


def char_ratios(text: str) -> tuple[float, float] | None:
    """(symbol share, digit share) of the non-space characters, one pass over code points.
    Symbols: anything that is not a letter, digit or space in the ASCII, Latin-1 and CJK
    punctuation blocks (letters of other scripts are never symbols)."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    space = (cps <= 32) | (cps == 0x3000) | (cps == 0xA0)
    dense = len(cps) - int(np.count_nonzero(space))
    if dense < MIN_RATIO_CHARS:
        return None
    digits = int(np.count_nonzero((cps >= 48) & (cps <= 57)))
    symbol = SYMBOL_TABLE[np.minimum(cps, len(SYMBOL_TABLE) - 1)]
    symbol &= ~space
    return int(np.count_nonzero(symbol)) / dense, digits / dense


@dataclass
class ChunkStats:
    """Code-point statistics of a chunk, from one encode and one vectorised pass over all its
    text: (symbol share, digit share) of every response, as ``char_ratios`` gives them, and
    each record's script counts, as ``lang.script_counts`` gives them."""

    ratios: list[list[tuple[float, float] | None]]  # per record, per response
    scripts: list[list[int]] | None  # per record, letters per script in lang.SCRIPTS order


def _pieces(rec: Record) -> tuple[list[str], list[bool]]:
    """A record's text pieces (``texts``) and which of them are responses (``response_texts``,
    in the same order)."""
    if rec.text is not None:
        return [rec.text], [True]
    pairs = turns(rec)
    return [m.content for _, m in pairs], [m.role == "assistant" for _, m in pairs]


def chunk_stats(records: list[Record], ratios: bool, scripts: bool) -> ChunkStats:
    """One encode of the chunk's text, one class-table lookup per code point and one bincount
    by (piece, class): spaces, digits, symbols and letters per script of every text piece."""
    pieces, is_resp, owner = [], [], []
    for r, rec in enumerate(records):
        ps, resp = _pieces(rec)
        pieces += ps
        is_resp += resp
        owner += [r] * len(ps)
    n, m = len(records), len(pieces)
    out = ChunkStats([[] for _ in range(n)], None)
    if not (ratios or scripts) or m == 0:
        out.scripts = [[0] * len(SCRIPTS) for _ in range(n)] if scripts else None
        return out
    # pieces joined by "\n"; the separators go to a row of their own (m), dropped after
    cps = np.frombuffer("\n".join(pieces).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lens = np.fromiter(map(len, pieces), dtype=np.int64, count=m)
    piece_of = np.repeat(np.arange(m), lens + 1)[: len(cps)]
    piece_of[np.cumsum(lens + 1)[:-1] - 1] = m
    codes = CLASS_TABLE[np.minimum(cps, len(CLASS_TABLE) - 1)]
    codes[(cps >= HAN_ASTRAL[0]) & (cps <= HAN_ASTRAL[1])] = SCRIPT_BASE + SCRIPTS.index("han")
    table = np.bincount(piece_of * N_CLASSES + codes, minlength=(m + 1) * N_CLASSES)
    table = table.reshape(m + 1, N_CLASSES)[:m]
    if ratios:
        dense = (lens - table[:, SPACE]).tolist()
        digits, symbols = table[:, DIGIT].tolist(), table[:, SYMBOL].tolist()
        for i, r in enumerate(owner):
            if is_resp[i]:
                d = dense[i]
                out.ratios[r].append(
                    None if d < MIN_RATIO_CHARS else (symbols[i] / d, digits[i] / d)
                )
    if scripts:
        per_rec = np.zeros((n, N_CLASSES), dtype=np.int64)
        np.add.at(per_rec, np.asarray(owner, dtype=np.int64), table)
        out.scripts = per_rec[:, SCRIPT_BASE:].tolist()
        # the detector reads a record's first SAMPLE_CHARS characters: recount longer ones
        rec_len = np.bincount(owner, weights=lens + 1, minlength=n) - 1
        for r in np.flatnonzero(rec_len > SAMPLE_CHARS).tolist():
            counts = script_counts("\n".join(texts(records[r])))
            out.scripts[r] = [counts.get(name, 0) for name in SCRIPTS]
    return out


def _symbol_table() -> np.ndarray:
    table = np.zeros(0x10000, dtype=bool)
    for lo, hi in (
        (0x21, 0x2F),
        (0x3A, 0x40),
        (0x5B, 0x60),
        (0x7B, 0x7E),
        (0xA1, 0xBF),
        (0x2000, 0x2BFF),
        (0x3001, 0x303F),
        (0xFE30, 0xFE4F),
        (0xFF01, 0xFF0F),
        (0xFF1A, 0xFF20),
        (0xFF3B, 0xFF40),
        (0xFF5B, 0xFF65),
    ):
        table[lo : hi + 1] = True
    table[0xFFFF] = False  # code points above the table are clipped to this entry: not symbols
    return table


SYMBOL_TABLE = _symbol_table()

# One class per code point for chunk_stats: OTHER, SPACE, DIGIT, SYMBOL (as char_ratios counts
# them), or SCRIPT_BASE + the index of its script in lang.SCRIPTS (as script_counts counts
# them). The two groups never overlap (checked here), so one lookup serves both statistics.
OTHER, SPACE, DIGIT, SYMBOL, SCRIPT_BASE = range(5)
N_CLASSES = SCRIPT_BASE + len(SCRIPTS)
HAN_ASTRAL = (0x20000, 0x2FA1F)  # the only script range above the table


def _class_table() -> np.ndarray:
    table = np.full(0x10000, OTHER, dtype=np.uint8)  # one byte per code point looked up
    table[SYMBOL_TABLE] = SYMBOL
    table[48:58] = DIGIT
    table[[*range(33), 0xA0, 0x3000]] = SPACE
    for lo, hi, name in RANGES:
        if lo < 0x10000:
            assert (table[lo : hi + 1] == OTHER).all(), (lo, hi)
            table[lo : hi + 1] = SCRIPT_BASE + SCRIPTS.index(name)
        else:
            assert (lo, hi) == HAN_ASTRAL and name == "han"
    table[0xFFFF] = OTHER  # code points above the table are clipped to this entry
    return table


CLASS_TABLE = _class_table()


class Filter(Step):
    name = "filter"
    Params = FilterParams

    def __init__(self, params: FilterParams) -> None:
        super().__init__(params)
        p = params
        self.roles = tuple(p.roles)
        phrases = "|".join(re.escape(x) for x in p.banned_phrases)
        self.banned_phrase = re.compile(phrases, re.IGNORECASE) if phrases else None
        self.banned_regexes = [re.compile(r) for r in p.banned_regexes]
        self.refusal = re.compile("|".join(REFUSALS), re.IGNORECASE) if p.refusals else None
        extra = "|".join(p.refusal_patterns)
        self.refusal_extra = re.compile(extra, re.IGNORECASE) if p.refusals and extra else None
        self.languages = set(p.languages) if p.languages is not None else None

    def _token_counts(self, records: list[Record]) -> list[list[int]]:
        """Token count of every checked turn, whole chunk in one batched tokenizer call."""
        tok = load_tokenizer_by_name(self.params.tokenizer)
        pieces = [texts(r, self.roles) for r in records]
        flat = [t for ps in pieces for t in ps]
        ids = tok(flat, add_special_tokens=False)["input_ids"] if flat else []
        lengths, out = [len(x) for x in ids], []
        for ps in pieces:
            out.append(lengths[: len(ps)])
            lengths = lengths[len(ps) :]
        return out

    def apply(self, records: list[Record]) -> list[Result]:
        p = self.params
        need_tokens = p.min_tokens or p.max_tokens or p.max_total_tokens
        counts = self._token_counts(records) if need_tokens else [None] * len(records)
        need_lang = self.languages is not None or p.annotate_language
        need_ratios = p.max_symbol_ratio is not None or p.max_digit_ratio is not None
        stats = chunk_stats(records, need_ratios, need_lang)
        return [
            self._check(rec, n, stats, i)
            for i, (rec, n) in enumerate(zip(records, counts, strict=True))
        ]

    def _check(self, rec: Record, tokens: list[int] | None, stats: ChunkStats, i: int) -> Result:
        removed = self._lengths(rec, tokens) or self._content(rec, stats.ratios[i])
        if removed is not None:
            return removed
        if stats.scripts is None:
            return None
        lang = detect_language("\n".join(texts(rec)), counts_of_row(stats.scripts[i]))
        allowed = lang == "und" and self.params.keep_undetermined
        if self.languages is not None and lang not in self.languages and not allowed:
            return Removed("language", f"detected {lang}", {f"lang:{lang}": 1})
        if self.params.annotate_language:
            return Changed(replace(rec, meta={**rec.meta, "language": lang}), {f"lang:{lang}": 1})
        return Noted({f"lang:{lang}": 1})

    def _lengths(self, rec: Record, tokens: list[int] | None) -> Removed | None:
        p = self.params
        turns = texts(rec, self.roles)
        if p.empty and any(not t.strip() for t in turns):
            return Removed("empty", "a turn is empty or whitespace-only")
        for t in turns:
            if p.min_chars is not None and len(t) < p.min_chars:
                return Removed("min_chars", f"a turn has {len(t)} characters")
            if p.max_chars is not None and len(t) > p.max_chars:
                return Removed("max_chars", f"a turn has {len(t)} characters")
        if tokens is not None:
            for n in tokens:
                if p.min_tokens is not None and n < p.min_tokens:
                    return Removed("min_tokens", f"a turn has {n} tokens")
                if p.max_tokens is not None and n > p.max_tokens:
                    return Removed("max_tokens", f"a turn has {n} tokens")
            if p.max_total_tokens is not None and sum(tokens) > p.max_total_tokens:
                return Removed("max_total_tokens", f"{sum(tokens)} tokens in all")
        return None

    def _content(self, rec: Record, ratios: list[tuple[float, float] | None]) -> Removed | None:
        p = self.params
        responses = response_texts(rec)
        for j, t in enumerate(responses):
            if p.max_ngram_repeat is not None:
                r = ngram_repeat(t, p.ngram_n)
                if r is not None and r > p.max_ngram_repeat:
                    return Removed("ngram_repeat", f"{r:.2f} of {p.ngram_n}-grams repeat")
            if p.max_line_repeat is not None:
                r = line_repeat(t)
                if r is not None and r > p.max_line_repeat:
                    return Removed("line_repeat", f"{r:.2f} of lines repeat")
            if ratios and ratios[j] is not None:  # computed only when a ratio rule is on
                sym, dig = ratios[j]
                if p.max_symbol_ratio is not None and sym > p.max_symbol_ratio:
                    return Removed("symbol_ratio", f"{sym:.2f} symbols")
                if p.max_digit_ratio is not None and dig > p.max_digit_ratio:
                    return Removed("digit_ratio", f"{dig:.2f} digits")
        if self.banned_phrase is not None or self.banned_regexes:
            everything = "\n".join(texts(rec))
            if self.banned_phrase is not None and (m := self.banned_phrase.search(everything)):
                return Removed("banned_phrase", repr(m.group(0)))
            for rx in self.banned_regexes:
                if m := rx.search(everything):
                    return Removed("banned_regex", f"{rx.pattern!r} matched {m.group(0)!r}")
        if self.refusal is not None:
            for t in responses:
                low = t.lower()
                gate = any(w in low for w in REFUSAL_WORDS)
                if (gate and (m := self.refusal.search(t))) or (
                    self.refusal_extra is not None and (m := self.refusal_extra.search(t))
                ):
                    return Removed("refusal", repr(m.group(0)))
        return None
