"""A small offline language detector from script statistics and stopwords.

No model and no download: the script of the letters decides CJK, Cyrillic, Arabic, Greek,
Hebrew, Thai and Devanagari text; within Latin script a handful of very frequent function words
separates English from French, German, Spanish, Portuguese, Italian and Dutch. Chinese with
kana is Japanese. Text with too few letters is "und" (undetermined). It is meant for filtering
chat data to the languages a fine-tune targets, not for linguistics: mixed text gets the
language of the majority of its letters.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from strop.data.prepare.base import ascii_runs_table

MIN_LETTERS = 8  # fewer letters than this: "und"

SAMPLE_CHARS = 2000  # the first characters are enough to tell, and keep long texts cheap
LATIN_SAMPLE_CHARS = 600  # ~100 words: plenty of function words in any real sentence
# Code point ranges of letters by script; one sorted table, looked up for all characters of a
# text at once (numpy searchsorted) instead of one regex scan per script.
RANGES = [
    (0x41, 0x5A, "latin"),
    (0x61, 0x7A, "latin"),
    (0xC0, 0x24F, "latin"),
    (0x370, 0x3FF, "greek"),
    (0x400, 0x4FF, "cyrillic"),
    (0x590, 0x5FF, "hebrew"),
    (0x600, 0x6FF, "arabic"),
    (0x900, 0x97F, "devanagari"),
    (0xE00, 0xE7F, "thai"),
    (0x1100, 0x11FF, "hangul"),
    (0x3040, 0x30FF, "kana"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xAC00, 0xD7AF, "hangul"),
    (0xF900, 0xFAFF, "han"),
    (0x20000, 0x2FA1F, "han"),
]
SCRIPTS = sorted({name for _, _, name in RANGES})
_EDGES, _LABELS = [0], [-1]  # -1: not a letter of a script we count
for _lo, _hi, _name in RANGES:
    _EDGES += [_lo, _hi + 1]
    _LABELS += [SCRIPTS.index(_name), -1]
EDGES = np.asarray(_EDGES, dtype=np.uint32)
LABELS = np.asarray(_LABELS, dtype=np.int64)
SCRIPT_LANG = {
    "cyrillic": "ru",
    "arabic": "ar",
    "greek": "el",
    "hebrew": "he",
    "thai": "th",
    "devanagari": "hi",
    "hangul": "ko",
}
STOPWORDS = {
    "en": "the and of to is in that it for you was with on are this be have not as at what "
    "can your do how i my we will would there which if they or an from by",
    "fr": "le la les et des est une un que pour dans qui pas sur au du avec ce il elle je vous "
    "nous sont mais",
    "de": "der die das und ist nicht ein eine zu den mit von sich auf für ich sie es dem des "
    "wir auch wie",
    "es": "el la los las y de que en un una es por con para no se lo del su al como pero más",
    "pt": "o a os as e de que em um uma é por com para não se do da dos das no na você",
    "it": "il la le e di che è un una per non con del della sono lo gli ma si come anche",
    "nl": "de het een en van is dat niet op te zijn met voor ik je er maar ook als wat",
}
WORD_LANGS: dict[str, list[str]] = {}  # word -> languages it is a function word of
for _lang, _words in STOPWORDS.items():
    for _w in _words.split():
        WORD_LANGS.setdefault(_w, []).append(_lang)
WORD_RE = re.compile(r"[^\W\d_]+")


def script_counts(text: str) -> Counter[str]:
    cps = np.frombuffer(text[:SAMPLE_CHARS].encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    labels = LABELS[np.searchsorted(EDGES, cps, side="right") - 1]
    counts = np.bincount(labels[labels >= 0], minlength=len(SCRIPTS))
    return Counter({SCRIPTS[i]: int(counts[i]) for i in np.flatnonzero(counts)})


# ASCII text: the words are the runs of letters, lower-cased.
ASCII_WORDS = ascii_runs_table(str.isalpha)


def words_of(text: str) -> list[str]:
    """Lower-cased runs of letters (digits and underscores separate words)."""
    if text.isascii():
        return text.translate(ASCII_WORDS).split()
    return WORD_RE.findall(text.lower())


def _latin_language(text: str) -> str:
    scores = dict.fromkeys(STOPWORDS, 0)
    words = words_of(text[:LATIN_SAMPLE_CHARS])
    for w in filter(WORD_LANGS.__contains__, words):  # the C-level filter skips most words
        for lang in WORD_LANGS[w]:
            scores[lang] += 1
    best = max((k for k in scores if k != "en"), key=lambda k: scores[k])
    # Latin script is English unless another language's function words clearly win: at least
    # 3 of them, twice the English count and a tenth of all words (real French or German text
    # is ~30% function words; a few shared short words like "no" or "a" decide nothing).
    n = scores[best]
    if n >= 3 and n >= 2 * scores["en"] and n >= 0.1 * len(words):
        return best
    return "en"


def counts_of_row(row: list[int]) -> Counter[str]:
    """script_counts' Counter from a row of counts in SCRIPTS order."""
    return Counter({name: c for name, c in zip(SCRIPTS, row, strict=True) if c})


def detect_language(text: str, counts: Counter[str] | None = None) -> str:
    """An ISO 639-1 code (en, zh, ja, ko, fr, de, es, pt, it, nl, ru, ar, el, he, th, hi) or
    "und" when there are too few letters to say. ``counts``: the text's script_counts when
    already computed (the filter counts a whole chunk in one pass)."""
    if counts is None:
        counts = script_counts(text)
    letters = sum(counts.values())
    if letters < MIN_LETTERS and not (counts["han"] + counts["kana"] + counts["hangul"] >= 2):
        return "und"
    cjk = counts["han"] + counts["kana"]
    if counts["kana"] >= max(2, 0.1 * cjk):
        return "ja"
    # Han characters each carry a word's worth of meaning, so they count more than letters.
    weighted = {name: n * (3 if name == "han" else 1) for name, n in counts.items()}
    top = max(weighted, key=lambda k: weighted[k])
    if top == "han":
        return "zh"
    if top == "latin":
        return _latin_language(text)
    return SCRIPT_LANG.get(top, "und")
