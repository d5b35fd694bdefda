"""normalise: each sub-step on hand-made cases, CJK included; counts per sub-step."""

from __future__ import annotations

from strop.data.prepare import clean_records
from strop.data.prepare.normalise import (
    Normalise,
    NormaliseParams,
    fix_mojibake,
    strip_tags,
    unescape_entities,
    unicode_form,
    whitespace,
)
from strop.data.records import Message, Record


def chat(user: str, answer: str = "ok") -> Record:
    return Record("t:1", messages=[Message("user", user), Message("assistant", answer)])


def test_nfkc_folds_fullwidth_ascii_but_keeps_cjk_punctuation():
    p = NormaliseParams()
    assert unicode_form("ＡＢＣ１２３，你好！", p) == "ABC123，你好！"
    assert unicode_form("ｶﾀｶﾅ", p) == "カタカナ"
    assert unicode_form("ﬁle №５", p) == "file No5"
    folded = unicode_form("你好，世界！", NormaliseParams(keep_cjk_punctuation=False))
    assert folded == "你好,世界!"
    none = NormaliseParams(unicode="none", fullwidth_ascii=True)
    assert unicode_form("ＡＢ，ﬁ", none) == "AB，ﬁ"  # width only, no compatibility folding


def test_mojibake_is_repaired_only_when_reliable():
    assert fix_mojibake("cafÃ© RenÃ©") == "café René"
    assert fix_mojibake("Itâ€™s fine") == "It’s fine"
    assert fix_mojibake("ä¸­æ–‡") == "中文"
    for legit in ("São Paulo", "naïve café", "Ã is a letter", "中文 Ã©"):
        assert fix_mojibake(legit) == legit


def test_html_tags_and_entities_outside_code():
    assert strip_tags("<p>Hello <b>world</b></p><br>next") == "Hello world\n\nnext"
    assert (
        strip_tags("Use `<b>` or ```html\n<div>x</div>\n```")
        == "Use `<b>` or ```html\n<div>x</div>\n```"
    )
    assert strip_tags("Vec<T> and a <vector> stay") == "Vec<T> and a <vector> stay"
    assert unescape_entities("a &amp; b &lt;c&gt; &#39;d&#39; &nbsp;") == "a & b <c> 'd' \xa0"
    assert unescape_entities("`&amp;` stays") == "`&amp;` stays"


def test_whitespace_and_control_characters():
    assert whitespace("a  \t b \n\n\n\nc  ", 1) == "a b\n\nc"
    code = "def f():\n    return  1\n```\nx  =  1\n```"
    assert whitespace(code, 1) == "def f():\n    return 1\n```\nx  =  1\n```"  # indentation kept
    step = Normalise(NormaliseParams())
    [res] = step.apply([chat("zero\u200bwidth\x07 bell\r\nnext")])
    assert res.record.messages[0].content == "zerowidth bell\nnext"
    assert res.notes == {"control": 1}


def test_unchanged_records_are_not_counted_as_changed():
    kept, removed = clean_records([chat("Plain text.", "Fine.")], [("normalise", {})])
    assert removed == [] and kept[0].messages[0].content == "Plain text."
    result = clean_records([chat("Plain text."), chat("ＡＢ  c")], [("normalise", {})])
    stats = result.stats[0]
    assert (stats.into, stats.kept, stats.changed) == (2, 1, 1)
    assert stats.notes == {"unicode": 1, "whitespace": 1}


def test_every_part_of_preference_and_text_records_is_normalised():
    pref = Record(
        "p:1",
        messages=[Message("user", "Ｑ？")],
        chosen=[Message("assistant", "ｙｅｓ")],
        rejected=[Message("assistant", "no  way")],
    )
    text = Record("t:1", text="ＡＢ &amp; <p>c</p>")
    kept, _ = clean_records([pref, text], [("normalise", {})])
    assert kept[0].messages[0].content == "Q?" and kept[0].chosen[0].content == "yes"
    assert kept[0].rejected[0].content == "no way"
    assert kept[1].text == "AB & c"
