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

MIN_LETTERS = 8  # fewer letters than this: "und"

SAMPLE_CHARS = 2000  # the first characters are enough to tell, and keep long texts cheap
# One regex per script; subn counts matches at C speed.
SCRIPT_RES = {
    "latin": re.compile("[A-Za-z\u00c0-\u024f]"),
    "han": re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]"),
    "kana": re.compile("[\u3040-\u30ff]"),
    "hangul": re.compile("[\uac00-\ud7af\u1100-\u11ff]"),
    "cyrillic": re.compile("[\u0400-\u04ff]"),
    "arabic": re.compile("[\u0600-\u06ff]"),
    "greek": re.compile("[\u0370-\u03ff]"),
    "hebrew": re.compile("[\u0590-\u05ff]"),
    "thai": re.compile("[\u0e00-\u0e7f]"),
    "devanagari": re.compile("[\u0900-\u097f]"),
}
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
    text = text[:SAMPLE_CHARS]
    counts: Counter[str] = Counter()
    if text.isascii():
        counts["latin"] = SCRIPT_RES["latin"].subn("", text)[1]
        return counts
    for name, pattern in SCRIPT_RES.items():
        n = pattern.subn("", text)[1]
        if n:
            counts[name] = n
    return counts


def _latin_language(text: str) -> str:
    scores = dict.fromkeys(STOPWORDS, 0)
    words = WORD_RE.findall(text[:SAMPLE_CHARS].lower())
    for w in words:
        for lang in WORD_LANGS.get(w, ()):
            scores[lang] += 1
    best = max((k for k in scores if k != "en"), key=lambda k: scores[k])
    # Latin script is English unless another language's function words clearly win: at least
    # 3 of them, twice the English count and a tenth of all words (real French or German text
    # is ~30% function words; a few shared short words like "no" or "a" decide nothing).
    n = scores[best]
    if n >= 3 and n >= 2 * scores["en"] and n >= 0.1 * len(words):
        return best
    return "en"


def detect_language(text: str) -> str:
    """An ISO 639-1 code (en, zh, ja, ko, fr, de, es, pt, it, nl, ru, ar, el, he, th, hi) or
    "und" when there are too few letters to say."""
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
