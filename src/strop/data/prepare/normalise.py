"""normalise: make equal text look equal before anything compares it.

Order matters and is fixed: mojibake first (it needs the original bytes' shape), then HTML,
control characters, Unicode normal form and width, and whitespace last (the others create or
reveal whitespace). Each sub-step counts the records it changed.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Literal

from pydantic import Field

from strop.config.schema import Section
from strop.data.prepare.base import CJK_RE, Changed, Result, Step, map_text
from strop.data.records import Record


class NormaliseParams(Section):
    unicode: Literal["NFKC", "NFC", "none"] = "NFKC"
    """Unicode normal form. NFKC also folds full-width ASCII (Ａ１ -> A1) and ligatures."""
    keep_cjk_punctuation: bool = True
    """Keep full-width punctuation (，！？：；（）) and the ideographic space in text that has CJK
    characters, which NFKC would otherwise turn into ASCII punctuation."""
    halfwidth_katakana: bool = True
    """Half-width katakana (ｶﾀｶﾅ) -> full-width, also when unicode is NFC/none."""
    fullwidth_ascii: bool = True
    """Full-width letters and digits -> ASCII, also when unicode is NFC/none."""
    whitespace: bool = True
    """Collapse runs of spaces/tabs, strip line ends, at most one blank line in a row, trim."""
    control: bool = True
    """Drop control and zero-width characters (keeps newline and tab); CRLF -> LF."""
    html_entities: bool = True
    """&amp; &lt; &#39; ... -> characters."""
    html_tags: bool = True
    """Remove common HTML tags (<p>, <br>, <div>, <span>, <a ...>, ...) outside code blocks;
    <br> and block ends become newlines. Unknown tags such as <T> or <vector> are kept."""
    mojibake: bool = True
    """Repair UTF-8 text that was decoded as cp1252/latin-1 (Ã© -> é, â€™ -> ’), only when the
    whole piece re-encodes and decodes strictly."""
    max_blank_lines: int = Field(1, ge=0)


# -- mojibake --------------------------------------------------------------------------------------
# A UTF-8 lead byte (0xC2-0xF4) read as cp1252/latin-1, followed by a continuation byte read the
# same way: the signature of double-decoded UTF-8. Plain accented text rarely has it.
_CONT = (
    "\x80-\xbf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
    "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
)
MOJIBAKE_RE = re.compile(f"[\u00c2-\u00f4][{_CONT}]")


def _reencode(text: str) -> bytes | None:
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            if ord(ch) < 256:  # the 5 bytes cp1252 leaves undefined come through latin-1
                out.append(ord(ch))
            else:
                return None
    return bytes(out)


def fix_mojibake(text: str) -> str:
    if text.isascii() or not MOJIBAKE_RE.search(text):
        return text
    raw = _reencode(text)
    if raw is None:
        return text
    try:
        fixed = raw.decode("utf-8")
    except UnicodeDecodeError:
        return text
    # Accept only if it removed the signature: a real repair leaves no lead/continuation pairs.
    return fixed if not MOJIBAKE_RE.search(fixed) else text


# -- HTML -----------------------------------------------------------------------------------------
_TAGS = (
    "a|abbr|b|big|blockquote|body|br|center|div|em|font|h[1-6]|head|hr|html|i|img|li|ol|p|"
    "small|span|strong|sub|sup|table|tbody|td|th|thead|tr|u|ul|title|meta|link|section|article"
)
TAG_RE = re.compile(f"</?(?:{_TAGS})(?:\\s[^<>]*)?/?>", re.IGNORECASE)
BREAK_RE = re.compile(r"<br\s*/?>|</(?:p|div|li|tr|h[1-6]|blockquote|table)>", re.IGNORECASE)
ENTITY_RE = re.compile(r"&(?:[a-zA-Z][a-zA-Z0-9]{1,30}|#\d{1,7}|#[xX][0-9a-fA-F]{1,6});")
CODE_RE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)


def _outside_code(text: str, fn) -> str:
    """Apply ``fn`` to the parts of ``text`` outside ``` fences and `inline code`."""
    if "`" not in text:
        return fn(text)
    out, pos = [], 0
    for m in CODE_RE.finditer(text):
        out.append(fn(text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(fn(text[pos:]))
    return "".join(out)


def strip_tags(text: str) -> str:
    if "<" not in text:
        return text

    def clean(part: str) -> str:
        return TAG_RE.sub("", BREAK_RE.sub("\n", part))

    return _outside_code(text, clean)


def unescape_entities(text: str) -> str:
    if "&" not in text:
        return text
    return _outside_code(text, lambda s: ENTITY_RE.sub(lambda m: html.unescape(m.group(0)), s))


# -- control characters, width, whitespace --------------------------------------------------------
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
CONTROL_RE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_ZERO_WIDTH}]")
# Full-width CJK punctuation NFKC would fold to ASCII; parked in the Private Use Area meanwhile.
CJK_PUNCT = "\uff0c\uff01\uff1f\uff1a\uff1b\uff08\uff09\u3000\uff5e"
_PARK = {ord(c): 0xE000 + i for i, c in enumerate(CJK_PUNCT)}
_UNPARK = {v: k for k, v in _PARK.items()}
_FULLWIDTH_ALNUM = {
    c: c - 0xFEE0
    for c in range(0xFF01, 0xFF5F)
    if chr(c - 0xFEE0).isalnum()  # letters and digits only; punctuation stays (see above)
}
FULLWIDTH_ALNUM_RE = re.compile(f"[{''.join(map(chr, _FULLWIDTH_ALNUM))}]")
HALFWIDTH_KATAKANA_RE = re.compile("[\uff65-\uff9f]+")
# Runs of spaces after a non-space character become one space: indentation at the start of a
# line is kept. Only runs that this changes are matched (two or more characters, or one that is
# not a plain space): matching every single space between words made this the slowest sub-step.
# The pattern starts with the character class so the regex engine can skip to the next space
# at C speed; the look-behinds then check that the run follows a non-space character and, for a
# run of one, that it is not a plain space.
_SPACES = " \t\u00a0\u2000-\u200a\u202f\u205f"
SPACE_RUN_RE = re.compile(f"[{_SPACES}](?<=\\S[{_SPACES}])(?:[{_SPACES}]+|(?<=[^ ]))")
TRAILING_RE = re.compile(r" +\n")


def _translate_few(text: str, mapping: dict[int, int]) -> str:
    """``text.translate(mapping)`` for a few one-character mappings whose targets are not
    sources: one C-speed scan per character instead of a dict lookup per character of text."""
    for src, dst in mapping.items():
        ch = chr(src)
        if ch in text:
            text = text.replace(ch, chr(dst))
    return text


def unicode_form(text: str, p: NormaliseParams) -> str:
    if text.isascii():
        return text  # ASCII is invariant under every normal form: the common case, skipped
    if p.fullwidth_ascii and FULLWIDTH_ALNUM_RE.search(text):
        text = text.translate(_FULLWIDTH_ALNUM)
    if p.halfwidth_katakana and HALFWIDTH_KATAKANA_RE.search(text):
        text = HALFWIDTH_KATAKANA_RE.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    if p.unicode == "none":
        return text
    if p.unicode == "NFKC" and p.keep_cjk_punctuation and CJK_RE.search(text):
        parked = unicodedata.normalize("NFKC", _translate_few(text, _PARK))
        return _translate_few(parked, _UNPARK)
    return unicodedata.normalize(p.unicode, text)


def _newlines(text: str) -> str:
    """CRLF and lone CR -> LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _collapse_spaces(text: str) -> str:
    if text.isascii() and "  " not in text and "\t" not in text:
        return text  # its only spaces are single ASCII spaces: nothing to collapse
    return SPACE_RUN_RE.sub(" ", text)


def whitespace(text: str, max_blank_lines: int) -> str:
    """Collapse inner runs of spaces (not inside code), trailing spaces and blank lines."""
    text = _outside_code(text, _collapse_spaces)
    if " \n" in text:
        text = TRAILING_RE.sub("\n", text)
    limit = "\n" * (max_blank_lines + 1)
    while limit + "\n" in text:
        text = text.replace(limit + "\n", limit)
    return text.strip()


class Normalise(Step):
    name = "normalise"
    Params = NormaliseParams

    def __init__(self, params: NormaliseParams) -> None:
        super().__init__(params)
        p = params
        subs: list[tuple[str, object]] = []
        if p.mojibake:
            subs.append(("mojibake", fix_mojibake))
        if p.html_tags:
            subs.append(("html_tags", strip_tags))
        if p.html_entities:
            subs.append(("html_entities", unescape_entities))
        if p.control:
            subs.append(
                (
                    "control",
                    lambda t: CONTROL_RE.sub("", _newlines(t)),
                )
            )
        subs.append(("unicode", lambda t: unicode_form(t, p)))
        if p.whitespace:
            subs.append(("whitespace", lambda t: whitespace(t, p.max_blank_lines)))
        self.subs = subs

    def apply(self, records: list[Record]) -> list[Result]:
        out: list[Result] = []
        for rec in records:
            notes: dict[str, int] = {}

            def run(text: str, notes: dict[str, int] = notes) -> str:
                for label, fn in self.subs:
                    new = fn(text)
                    if new != text:
                        notes[label] = 1
                        text = new
                return text

            new_rec = map_text(rec, run)
            out.append(Changed(new_rec, notes) if new_rec is not None else None)
        return out
