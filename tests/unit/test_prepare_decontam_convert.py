"""decontaminate (eval items hit, CJK) and convert (layouts, identical pairs, file formats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.data.prepare import clean_records
from strop.data.prepare.io import to_row
from strop.data.records import Message, Record
from strop.errors import StropError


def chat(user: str, answer: str, i: int) -> Record:
    return Record(f"t:{i}", messages=[Message("user", user), Message("assistant", answer)])


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": "What is the boiling point of water at sea level in Celsius?",
                },
                {"role": "assistant", "content": "100"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "中国的首都是哪座城市？请介绍它的历史。"},
                {"role": "assistant", "content": "北京"},
            ]
        },
        {
            "question": "Which planet has the most known moons in the solar system today?",
            "A": "Saturn",
        },
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_decontaminate_removes_overlaps_and_names_the_eval_items(eval_file: Path):
    recs = [
        chat("Q: what is the boiling point of water at sea level in celsius? Explain.", "100 C", 0),
        chat("请问：中国的首都是哪座城市？请介绍它的历史。", "北京是首都。", 1),
        chat(
            "Tell me which planet has the most known moons in the solar system today", "Saturn", 2
        ),
        chat("What is the melting point of iron?", "About 1538 C.", 3),
        chat("Water boils at what point?", "100 C at sea level.", 4),
    ]
    result = clean_records(recs, [("decontaminate", {"eval_files": [str(eval_file)], "n": 5})])
    assert [r.origin for r in result.kept] == ["t:3", "t:4"]
    hits = {r["origin"]: r["reason"] for r in result.removed}
    assert (
        f"{eval_file}:1" in hits["t:0"]
        and f"{eval_file}:2" in hits["t:1"]
        and f"{eval_file}:3" in hits["t:2"]
    )
    assert result.stats[0].notes == {f"hit:{eval_file}:{i}": 1 for i in (1, 2, 3)}


def test_decontaminate_missing_eval_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StropError, match="eval file not found"):
        clean_records([], [("decontaminate", {"eval_files": [str(tmp_path / "nope.jsonl")]})])


def pair(i: int, chosen: str, rejected: str) -> Record:
    return Record(
        f"p:{i}",
        messages=[Message("user", f"question {i}")],
        chosen=[Message("assistant", chosen)],
        rejected=[Message("assistant", rejected)],
    )


def test_preference_to_kto_splits_pairs_and_reports_identical_ones():
    recs = [pair(0, "good", "bad"), pair(1, "same", " same "), pair(2, "yes", "no")]
    result = clean_records(recs, [("convert", {"to": "kto"})])
    assert [(r.origin, r.label, r.completion[0].content) for r in result.kept] == [
        ("p:0#chosen", True, "good"),
        ("p:0#rejected", False, "bad"),
        ("p:2#chosen", True, "yes"),
        ("p:2#rejected", False, "no"),
    ]
    assert [(r["origin"], r["rule"]) for r in result.removed] == [("p:1", "identical_pair")]
    s = result.stats[0]
    assert (s.into, s.changed, s.removed, s.added) == (3, 2, 1, 2)
    kept, removed = clean_records(
        recs, [("convert", {"to": "preference", "drop_identical_pairs": False})]
    )
    assert len(kept) == 3 and not removed


def test_chat_and_kto_layouts():
    kto_good = Record(
        "k:0", messages=[Message("user", "q")], completion=[Message("assistant", "a")], label=True
    )
    kto_bad = Record(
        "k:1", messages=[Message("user", "q")], completion=[Message("assistant", "b")], label=False
    )
    text = Record("x:0", text="a document")
    result = clean_records(
        [kto_good, kto_bad, text, pair(0, "c", "r")], [("convert", {"to": "messages"})]
    )
    assert [[m.content for m in r.messages] for r in result.kept] == [
        ["q", "a"],
        ["question 0", "c"],
    ]
    assert [r["rule"] for r in result.removed] == ["undesirable", "no_conversation"]
    kept, _ = clean_records([chat("u", "a", 0)], [("convert", {"to": "kto"})])
    assert (
        kept[0].layout == "kto" and kept[0].completion[0].content == "a" and kept[0].label is True
    )
    kept, _ = clean_records([chat("u", "a", 0)], [("convert", {"to": "text"})])
    assert kept[0].text == "u\n\na"


def test_alpaca_needs_alternating_turns():
    multi = Record(
        "t:1",
        messages=[
            Message("system", "s"),
            Message("user", "u1"),
            Message("assistant", "a1"),
            Message("user", "u2"),
            Message("assistant", "a2"),
        ],
    )
    tool = Record(
        "t:2", messages=[Message("user", "u"), Message("tool", "t"), Message("assistant", "a")]
    )
    result = clean_records([multi, tool], [("convert", {"to": "alpaca"})])
    assert [r.origin for r in result.kept] == ["t:1"] and result.removed[0]["rule"] == "not_alpaca"
    row = to_row(multi, "alpaca")
    assert row == {
        "system": "s",
        "instruction": "u2",
        "input": "",
        "output": "a2",
        "history": [["u1", "a1"]],
    }
    assert to_row(chat("u", "a", 0), "sharegpt") == {
        "conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]
    }
    pref = to_row(pair(0, "c", "r"))
    assert set(pref) == {"prompt", "chosen", "rejected"}
