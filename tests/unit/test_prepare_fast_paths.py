"""The prepare steps' fast paths (ASCII shortcuts, cheap gates before regexes, vectorised
tokenisation) give exactly what the straightforward code they replace gives. Each reference
below is the code as it was before the fast path, kept here to compare against, on texts built
from snippets chosen to hit the edge cases: every script the steps treat specially, digits
that are not ASCII, case mappings that change length, control and zero-width characters,
astral characters, lone surrogates, and the shapes the PII detectors look for."""

from __future__ import annotations

import random
import re

from strop.data.prepare.pii import may_contain_pii

SNIPPETS = [
    "the",
    "The",
    "QUICK",
    "brown",
    "fox",
    "a",
    "I",
    "and",
    "of",
    "le",
    "der",
    "und",
    "de",
    "x_y",
    "snake_case",
    "CamelCase",
    "abc123def",
    "42",
    "7",
    "3.14",
    "1.2.3.4",
    "2024",
    "١٢٣",
    "٣",
    "３",
    "１２３",
    "Ａｂｃ",
    "ｶﾀｶﾅ",
    "ß",
    "İstanbul",
    "ΟΔΟΣ",
    "Σ",
    "ὈΔΥΣΣΕΎΣ",
    "é",
    "Ã©",
    "â€™",
    "naïve",
    "中文",
    "字",
    "。",
    "，",
    "！",
    "（）",
    "\u3000",
    "日本語",
    "カナ",
    "한국어",
    "Жж",
    "€",
    "😀",
    "𠀀",
    "𝐀",
    "\U0002a6d7",
    "\ue000",
    "\ue003",
    "\ud800",
    " ",
    " ",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n\n",
    " \n",
    "\r\n",
    "\r",
    "\xa0",
    "\u2003",
    "\u202f",
    "\u200b",
    "\xad",
    "\x07",
    "\x1f",
    "\x85",
    "\x0b",
    "\x0c",
    "\u2028",
    "<p>",
    "</div>",
    "<br/>",
    "<T>",
    "&amp;",
    "&#39;",
    "`code`",
    "```",
    "_",
    "-",
    "--",
    "-----",
    ":",
    "@",
    ".",
    "a@b.com",
    "+1 415-555-0132",
    "13912345678",
    "4111 1111 1111 1111",
    "AKIAIOSFODNN7EXAMPLE",
    "abcdefghijklmnopqrstu",
    "ABCDEFGHIJKLMNOPQRST1",
    "x" * 19,
    "192.168.0.1",
    "::1",
    "https://u:p@h",
    "password=hunter2hunter",
    "!?",
    "#",
    "$1,234.56",
]


def tricky_texts(n: int, seed: int = 0, max_parts: int = 40) -> list[str]:
    """``n`` texts of 0 to ``max_parts`` snippets, joined with or without spaces."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(SNIPPETS) for _ in range(rng.randint(0, max_parts))]
        out.append(rng.choice(["", " ", " ", "\n"]).join(parts))
    return out


# -- pii --------------------------------------------------------------------------------------------
REF_PII_GATE = re.compile(r"\d{3}|\d\.\d|:|@|-----|[A-Za-z0-9]{20}")


def test_pii_gate_equals_the_one_regex_it_replaces():
    texts = tricky_texts(3000, seed=1)
    texts += ["a" * k for k in range(18, 23)] + ["-" + "a" * 20, "é" + "a" * 20, "１２３", "٣.٣"]
    decided = [may_contain_pii(t) for t in texts]
    assert decided == [REF_PII_GATE.search(t) is not None for t in texts]
    assert 0.2 < sum(decided) / len(decided) < 0.95  # both answers are exercised


# -- normalise --------------------------------------------------------------------------------------
REF_SPACE_RUN = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u202f\u205f]+")


def ref_whitespace(text: str, max_blank_lines: int) -> str:
    from strop.data.prepare.normalise import TRAILING_RE, _outside_code

    text = _outside_code(text, lambda part: REF_SPACE_RUN.sub(" ", part))
    text = TRAILING_RE.sub("\n", text)
    limit = "\n" * (max_blank_lines + 1)
    while limit + "\n" in text:
        text = text.replace(limit + "\n", limit)
    return text.strip()


def ref_unicode_form(text: str, p) -> str:
    import unicodedata

    from strop.data.prepare.base import CJK_RE
    from strop.data.prepare.normalise import (
        _FULLWIDTH_ALNUM,
        _PARK,
        _UNPARK,
        HALFWIDTH_KATAKANA_RE,
    )

    if text.isascii():
        return text
    if p.fullwidth_ascii:
        text = text.translate(_FULLWIDTH_ALNUM)
    if p.halfwidth_katakana and HALFWIDTH_KATAKANA_RE.search(text):
        text = HALFWIDTH_KATAKANA_RE.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    if p.unicode == "none":
        return text
    if p.unicode == "NFKC" and p.keep_cjk_punctuation and CJK_RE.search(text):
        return unicodedata.normalize("NFKC", text.translate(_PARK)).translate(_UNPARK)
    return unicodedata.normalize(p.unicode, text)


def test_normalise_sub_steps_equal_their_reference():
    from strop.data.prepare.normalise import (
        CONTROL_RE,
        Normalise,
        NormaliseParams,
        unicode_form,
        whitespace,
    )

    extra = [
        "a  b\t\tc",
        "x \t y",
        "a\u3000\u3000b",
        "ｶﾀｶﾅ，中文（）",
        "\ue000中\ue008",
        "`a  b` c  d",
    ]
    texts = tricky_texts(3000, seed=2) + extra
    for blank in (0, 1, 2):
        assert [whitespace(t, blank) for t in texts] == [ref_whitespace(t, blank) for t in texts]
    for form in ("NFKC", "NFC", "none"):
        for flags in ((True, True, True), (False, False, False), (True, False, True)):
            p = NormaliseParams(
                unicode=form,
                keep_cjk_punctuation=flags[0],
                halfwidth_katakana=flags[1],
                fullwidth_ascii=flags[2],
            )
            assert [unicode_form(t, p) for t in texts] == [ref_unicode_form(t, p) for t in texts]
    control = dict(Normalise(NormaliseParams()).subs)["control"]
    ref = [CONTROL_RE.sub("", t.replace("\r\n", "\n").replace("\r", "\n")) for t in texts]
    assert [control(t) for t in texts] == ref
    changed = sum(whitespace(t, 1) != t for t in texts)
    assert 0.3 < changed / len(texts) < 1  # both answers are exercised


# -- dedup_near -------------------------------------------------------------------------------------
def test_token_hashes_from_code_points_equal_hashing_the_token_lists():
    """``text_token_hashes`` tokenises and hashes whole chunks from their code points; it gives
    ``token_hashes`` of exactly the tokens ``ngram_tokens`` / ``char_tokens`` produce."""
    import numpy as np

    from strop.data.prepare.base import ngram_tokens
    from strop.data.prepare.minhash import char_tokens, text_token_hashes, token_hashes

    texts = tricky_texts(2000, seed=3) + ["", " ", "a", "y" * 300 + " z", "中" * 3 + "ab" * 200]
    for mode, tokenize in (("words", ngram_tokens), ("chars", char_tokens)):
        for chunk in (texts[:1], texts[-5:], [""], ["", "\n"], texts):
            hashes, counts = text_token_hashes(chunk, mode)
            lists = [tokenize(t) for t in chunk]
            assert counts.tolist() == [len(tokens) for tokens in lists]
            assert np.array_equal(hashes, token_hashes([t for ts in lists for t in ts]))


# -- text access, filter, dedup_exact ---------------------------------------------------------------
def mixed_records(n: int, seed: int) -> list:
    """Chat, text, preference and KTO records of tricky texts."""
    from strop.data.records import Message, Record

    rng = random.Random(seed)
    pool = tricky_texts(4 * n, seed=seed)
    pick = lambda: rng.choice(pool)  # noqa: E731
    msg = lambda role: Message(role, pick())  # noqa: E731
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            roles = ["system", "user", "assistant", "tool", "user", "assistant"]
            out.append(Record(f"t:{i}", messages=[msg(r) for r in roles[: rng.randint(1, 6)]]))
        elif kind == 1:
            out.append(Record(f"t:{i}", text=pick()))
        elif kind == 2:
            out.append(
                Record(
                    f"t:{i}",
                    messages=[msg("user")],
                    chosen=[msg("assistant")],
                    rejected=[msg("assistant")],
                )
            )
        else:
            out.append(
                Record(
                    f"t:{i}",
                    messages=[msg("user")],
                    completion=[msg("assistant")],
                    label=rng.random() < 0.5,
                )
            )
    return out


def test_texts_equal_the_contents_of_turns():
    from strop.data.prepare.base import texts, turns

    for rec in mixed_records(200, seed=4):
        for roles in (None, ("user", "assistant"), ("assistant",), ()):
            want = (
                [rec.text]
                if rec.text is not None
                else [m.content for _, m in turns(rec) if roles is None or m.role in roles]
            )
            assert texts(rec, roles) == want


def test_ascii_word_splits_equal_the_regexes():
    from strop.data.prepare.base import TOKEN_RE, ngram_tokens
    from strop.data.prepare.lang import WORD_RE, words_of

    ascii_texts = [t for t in tricky_texts(3000, seed=5) if t.isascii()]
    ascii_texts += ["".join(map(chr, range(128))), "A_b-C9d"]
    assert len(ascii_texts) > 100
    for t in ascii_texts:
        assert ngram_tokens(t) == TOKEN_RE.findall(t.lower())
        assert words_of(t) == WORD_RE.findall(t.lower())


def test_whitespace_split_equals_the_whitespace_regex_on_every_character():
    every = "".join(chr(c) for c in range(0x3100)) + "\u3000\ufeff\U00010000"
    spaces = re.compile(r"\s+")
    assert " ".join(every.split()) == spaces.sub(" ", every).strip()
    for t in tricky_texts(1000, seed=6):
        assert " ".join(t.split()) == spaces.sub(" ", t).strip()


def test_near_dedup_index_decides_like_a_scan_of_every_kept_record():
    """dedup_near's band index (a record, or a list once a key is shared; lookups batched)
    finds the same best match as comparing with every kept record that shares a band key, on
    400 keyed records drawn from small alphabets so that buckets collide often."""
    import numpy as np

    from strop.data.prepare.near_dedup import NearDedup, NearDedupParams

    rng = random.Random(7)
    rows = []
    for i in range(400):
        keys = [rng.randrange(6) for _ in range(4)]
        sig = np.array([rng.randrange(3) for _ in range(8)], dtype=np.uint16).tobytes()
        rows.append((f"r:{i}", keys, sig, float(rng.randrange(50))))
    for keep in ("first", "longest"):
        step = NearDedup(NearDedupParams(threshold=0.6, num_perm=8, bands=4, keep=keep))
        got = {}
        for uid, (origin, keys, sig, size) in enumerate(rows):
            got[uid] = step.decide((keys, sig, size), origin, {"uid": uid, "raw": b"{}"})
        if keep == "longest":
            got.update(step.finish())
        removed = {uid: d.duplicate_of for uid, d in got.items() if d.removed is not None}
        # the reference: greedy in keep order, best estimate among kept records sharing a key
        order = sorted(range(len(rows)), key=lambda u: (-rows[u][3], u) if keep != "first" else u)
        kept: list[int] = []
        want = {}
        for u in order:
            _, keys, sig, _ = rows[u]
            mine = np.frombuffer(sig, dtype=np.uint16)
            best = None
            for c in kept:
                if any(a == b for a, b in zip(rows[c][1], keys, strict=True)):
                    est = np.count_nonzero(np.frombuffer(rows[c][2], np.uint16) == mine) / 8
                    if est >= 0.6 and (best is None or est > best[1]):
                        best = (c, est)
            if best is None:
                kept.append(u)
            else:
                want[u] = rows[best[0]][0]
        assert removed == want, keep
        assert 50 < len(removed) < 350
