"""filter: every rule on hand-made cases (English and Chinese), counted per rule."""

from __future__ import annotations

import pytest

from strop.data.prepare import clean_records
from strop.data.prepare.lang import detect_language
from strop.data.records import Message, Record
from strop.errors import StropError


def chat(user: str, answer: str, i: int = 1) -> Record:
    return Record(f"t:{i}", messages=[Message("user", user), Message("assistant", answer)])


def removed_rules(records: list[Record], **params) -> list[str | None]:
    """The rule that removed each record, or None if kept."""
    result = clean_records(records, [("filter", params)])
    by_origin = {r["origin"]: r["rule"] for r in result.removed}
    return [by_origin.get(r.origin) for r in records]


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("The weather is nice today and we are going to the park.", "en"),
        ("今天天气很好，我们去公园散步吧。", "zh"),
        ("Python 的 list 怎么排序？用 sorted 就可以了。", "zh"),
        ("今日はいい天気ですね。公園に行きましょう。", "ja"),
        ("오늘 날씨가 정말 좋네요", "ko"),
        ("Le chat dort sur la table et il ne veut pas bouger.", "fr"),
        ("Der Hund ist nicht mit dem Ball im Garten und die Katze auch nicht.", "de"),
        ("Сегодня хорошая погода, пойдем гулять.", "ru"),
        ("42", "und"),
    ],
)
def test_language_detector(text: str, lang: str):
    assert detect_language(text) == lang


def test_length_rules_in_characters_per_turn():
    recs = [chat("hi", "a fine answer", 1), chat("a question", "x", 2), chat("q" * 50, "ok", 3)]
    assert removed_rules(recs, min_chars=2) == [None, "min_chars", None]
    assert removed_rules(recs, max_chars=20) == [None, None, "max_chars"]
    assert removed_rules(recs, min_chars=2, roles=["user"]) == [None, None, None]


def test_empty_turns_are_removed():
    rec = Record("t:1", messages=[Message("user", "  "), Message("assistant", "answer")])
    assert removed_rules([rec]) == ["empty"]
    assert removed_rules([rec], empty=False) == [None]


def test_token_rules_use_the_named_tokenizer():
    # tiny-llama's tokenizer is about one token per character: "short" 5, "ok" 2, the long one 39
    recs = [chat("one two three four five six seven eight", "ok", 1), chat("short", "ok", 2)]
    assert removed_rules(recs, tokenizer="tiny-llama", max_tokens=10) == ["max_tokens", None]
    assert removed_rules(recs, tokenizer="tiny-llama", min_tokens=6, roles=["user"]) == [
        None,
        "min_tokens",
    ]
    assert removed_rules(recs, tokenizer="tiny-llama", max_total_tokens=10) == [
        "max_total_tokens",
        None,
    ]


def test_token_rules_without_a_tokenizer_are_a_config_error():
    with pytest.raises(StropError, match="max_tokens: set tokenizer"):
        clean_records([], [("filter", {"max_tokens": 5})])


def test_repetition_ratios_english_and_chinese():
    varied = "the cat sat on the mat while a dog slept by the warm fire in the old house"
    looping = "buy now " * 20
    zh_loop = "好的好的好的" * 10
    lines = "\n".join(["same line"] * 5 + ["other line"])
    recs = [chat("q", varied, 1), chat("q", looping, 2), chat("q", zh_loop, 3), chat("q", lines, 4)]
    # repeated lines repeat their n-grams too
    assert removed_rules(recs, max_ngram_repeat=0.3) == [None, *["ngram_repeat"] * 3]
    assert removed_rules(recs, max_line_repeat=0.5) == [None, None, None, "line_repeat"]


def test_symbol_and_digit_ratios():
    recs = [
        chat("q", "A normal sentence with words in it.", 1),
        chat("q", "#### ==== **** //// !!!! ???? ;;;;", 2),
        chat("q", "1234567890 0987654321 12345 67890", 3),
    ]
    assert removed_rules(recs, max_symbol_ratio=0.5) == [None, "symbol_ratio", None]
    assert removed_rules(recs, max_digit_ratio=0.5) == [None, None, "digit_ratio"]


def test_banned_phrases_and_regexes():
    recs = [chat("q", "Visit OUR SPONSOR today", 1), chat("q", "call 555", 2), chat("q", "fine", 3)]
    assert removed_rules(recs, banned_phrases=["our sponsor"]) == ["banned_phrase", None, None]
    assert removed_rules(recs, banned_regexes=[r"call \d+"]) == [None, "banned_regex", None]
    with pytest.raises(StropError, match="invalid regular expression"):
        clean_records([], [("filter", {"banned_regexes": ["(unclosed"]})])


def test_language_filter_keeps_targets_and_undetermined():
    recs = [
        chat("How are you today?", "I am fine, thank you for asking.", 1),
        chat("你好吗？", "我很好，谢谢你的关心。", 2),
        chat("Comment allez-vous?", "Je vais très bien, merci pour la question.", 3),
        chat("1+1", "2", 4),
    ]
    assert removed_rules(recs, languages=["en", "zh"]) == [None, None, "language", None]
    assert removed_rules(recs, languages=["en", "zh"], keep_undetermined=False)[3] == "language"
    result = clean_records(recs, [("filter", {"languages": ["en", "zh"]})])
    assert result.stats[0].notes == {"lang:en": 1, "lang:zh": 1, "lang:fr": 1, "lang:und": 1}
    annotated, _ = clean_records(recs[:2], [("filter", {"annotate_language": True})])
    assert [r.meta["language"] for r in annotated] == ["en", "zh"]


def test_refusals_on_assistant_turns_only():
    recs = [
        chat("q", "As an AI language model, I cannot do that.", 1),
        chat("q", "I'm sorry, but I can't help with that.", 2),
        chat("q", "抱歉，我无法回答这个问题。", 3),
        chat("I'm sorry, but I can't find my keys", "Check your coat pockets.", 4),
        chat("q", "Sorry for the delay! Here is the answer: 42.", 5),
    ]
    assert removed_rules(recs, refusals=True) == ["refusal", "refusal", "refusal", None, None]
    assert removed_rules(recs[4:], refusals=True, refusal_patterns=["sorry for the delay"]) == [
        "refusal"
    ]


def test_first_failing_rule_is_reported_and_counted():
    recs = [chat("qq", "x", 1), chat("qq", "buy now " * 20, 2), chat("qq", "fine answer here", 3)]
    result = clean_records(recs, [("filter", {"min_chars": 2, "max_ngram_repeat": 0.3})])
    s = result.stats[0]
    assert (s.into, s.kept, s.removed) == (3, 1, 2)
    assert dict(s.rules) == {"min_chars": 1, "ngram_repeat": 1}
    assert {r["origin"]: r["step"] for r in result.removed} == {"t:1": "filter", "t:2": "filter"}


def test_chunk_statistics_equal_the_per_text_functions():
    """The filter's one-pass statistics of a chunk give, record by record, exactly what the
    per-text functions give (mixed layouts, CJK, astral characters, empty turns, texts longer
    than the language sample)."""
    import random

    from strop.data.prepare.base import response_texts, texts
    from strop.data.prepare.filters import char_ratios, chunk_stats
    from strop.data.prepare.lang import SAMPLE_CHARS, counts_of_row, script_counts

    rng = random.Random(0)
    alphabet = "abc XYZ 123 !?.,;\n\t中文字。，「」カナ한국어Жж€😀\u3000\xa0"
    rand = lambda lo, hi: "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    recs = []
    for i in range(300):
        kind = i % 4
        if kind == 0:
            msgs = [
                Message(rng.choice(["system", "user", "assistant"]), rand(0, 60))
                for _ in range(rng.randint(1, 4))
            ]
            recs.append(Record(f"t:{i}", messages=msgs))
        elif kind == 1:
            recs.append(Record(f"t:{i}", text=rand(0, 3 * SAMPLE_CHARS)))
        elif kind == 2:
            recs.append(
                Record(
                    f"t:{i}",
                    messages=[Message("user", rand(1, 30))],
                    chosen=[Message("assistant", rand(0, 50))],
                    rejected=[Message("assistant", rand(0, 50))],
                )
            )
        else:
            recs.append(chat(rand(SAMPLE_CHARS, SAMPLE_CHARS + 50), rand(0, 80), i))
    stats = chunk_stats(recs, ratios=True, scripts=True)
    for i, rec in enumerate(recs):
        assert stats.ratios[i] == [char_ratios(t) for t in response_texts(rec)], i
        assert counts_of_row(stats.scripts[i]) == script_counts("\n".join(texts(rec))), i
    assert any(r is not None for rs in stats.ratios for r in rs)
    assert any(r is None for rs in stats.ratios for r in rs)
