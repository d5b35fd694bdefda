"""The JSON-extraction scorer: parsing of messy model output and exact score arithmetic."""

from __future__ import annotations

import json

import pytest

from strop.eval.extraction import (
    FIELDS,
    ExtractionScores,
    format_scores_table,
    parse_json_object,
    score_extractions,
)

GOLD = {
    "company": "Kesdex Semiconductor Co., Ltd.",
    "stock_code": "688290",
    "event_type": "share_buyback",
    "date": "2025-10-24",
    "amount": "800000000 CNY",
    "counterparty_or_person": None,
}
GOLD_NONE = {
    "company": "Lysven Food Inc.",
    "stock_code": "600920",
    "event_type": "none",
    "date": None,
    "amount": None,
    "counterparty_or_person": None,
}


def dumps(d: dict) -> str:
    return json.dumps(d, separators=(", ", ": "))


def test_parse_plain_fenced_and_trailing_text():
    assert parse_json_object(dumps(GOLD)) == GOLD
    assert parse_json_object(f"```json\n{dumps(GOLD)}\n```") == GOLD
    assert parse_json_object(f"Sure! Here it is: {dumps(GOLD)} Hope that helps {{x}}") == GOLD


def test_parse_skips_broken_braces_and_handles_strings_with_braces():
    text = 'first {not json} then {"a": "x}y{", "b": {"c": 1}} and more'
    assert parse_json_object(text) == {"a": "x}y{", "b": {"c": 1}}
    assert parse_json_object('{"a": "quote \\" and }"}') == {"a": 'quote " and }'}


@pytest.mark.parametrize("text", ["", "no json here", "{", '{"a": 1', "[1, 2]", '"str"', None])
def test_parse_returns_none_for_invalid(text):
    assert parse_json_object(text) is None


def test_all_correct_including_fences_whitespace_and_nulls():
    preds = [
        dumps(GOLD),
        f"```json\n{dumps(GOLD_NONE)}\n```",
        dumps({**GOLD, "company": "  Kesdex Semiconductor Co., Ltd. "}) + "\nDone.",
    ]
    s = score_extractions(preds, [dumps(GOLD), dumps(GOLD_NONE), dumps(GOLD)])
    assert s.n == 3
    assert s.valid_json == 1.0
    assert s.exact_match == 1.0
    assert s.field_accuracy == 1.0
    assert s.per_field == dict.fromkeys(FIELDS, 1.0)
    assert s.event_type_accuracy == 1.0


def test_mixed_predictions_exact_numbers():
    refs = [dumps(GOLD), dumps(GOLD), dumps(GOLD_NONE), dumps(GOLD_NONE)]
    preds = [
        dumps(GOLD),  # all 6 right
        dumps({**GOLD, "amount": "800 million CNY"}),  # 5 of 6 right
        "I cannot find any event.",  # invalid JSON: 0 of 6
        # null vs "null" string and missing key: date wrong, amount missing -> None == None ok
        dumps({k: v for k, v in {**GOLD_NONE, "date": "null"}.items() if k != "amount"}),
    ]
    s = score_extractions(preds, refs)
    assert s.n == 4
    assert s.valid_json == 0.75
    assert s.exact_match == 0.25
    assert s.field_accuracy == pytest.approx((6 + 5 + 0 + 5) / 24)
    assert s.per_field == {
        "company": 0.75,
        "stock_code": 0.75,
        "event_type": 0.75,
        "date": 0.5,
        "amount": 0.5,
        "counterparty_or_person": 0.75,
    }
    assert s.event_type_accuracy == 0.75


def test_types_are_strict():
    pred = dumps({**GOLD, "stock_code": 688290, "counterparty_or_person": ""})
    s = score_extractions([pred], [dumps(GOLD)])
    assert s.per_field["stock_code"] == 0.0
    assert s.per_field["counterparty_or_person"] == 0.0
    assert s.field_accuracy == pytest.approx(4 / 6)
    assert s.exact_match == 0.0


def test_empty_and_mismatched_inputs():
    s = score_extractions([], [])
    assert (s.n, s.valid_json, s.exact_match, s.field_accuracy) == (0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="pair up"):
        score_extractions(["{}"], [])
    with pytest.raises(ValueError, match="reference 0"):
        score_extractions(["{}"], ["not json"])


def test_as_dict_and_table():
    base = score_extractions(["nope", dumps(GOLD)], [dumps(GOLD), dumps(GOLD)])
    tuned = score_extractions([dumps(GOLD), dumps(GOLD)], [dumps(GOLD), dumps(GOLD)])
    d = base.as_dict()
    assert d["n"] == 2 and d["valid_json"] == 0.5 and d["per_field"]["date"] == 0.5
    assert isinstance(base, ExtractionScores)
    table = format_scores_table({"base": base, "tuned": tuned})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "tuned"]
    assert set(lines[1]) == {"-"}
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["n"] == ["2", "2"]
    assert rows["exact_match"] == ["0.500", "1.000"]
    assert rows["counterparty_or_person"] == ["0.500", "1.000"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
