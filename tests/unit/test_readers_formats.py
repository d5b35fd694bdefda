"""Readers, format detection and conversion: every supported format and file type."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from strop.data.formats import RowProblem, detect_format
from strop.data.readers import read_rows
from strop.data.records import Message
from strop.data.to_record import to_record
from strop.data.validate import load_records
from strop.errors import StropError

ALPACA = {"instruction": "Add", "input": "2 and 3", "output": "5", "source": "math"}
SHAREGPT = {
    "system": "Be terse.",
    "conversations": [
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": '{"name": "weather"}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "Sunny."},
    ],
}
MESSAGES = {
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
}
TEXT = {"text": "Once upon a time.", "id": 7}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def msgs(record) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in record.messages]


# --- conversion ------------------------------------------------------------------------------


def test_alpaca_input_system_history_and_meta():
    row = {
        **ALPACA,
        "system": "Be exact.",
        "history": [["What is 1+1?", "2"], ["And 2+2?", "4"]],
    }
    rec = to_record("alpaca", row, "f:1")
    assert msgs(rec) == [
        ("system", "Be exact."),
        ("user", "What is 1+1?"),
        ("assistant", "2"),
        ("user", "And 2+2?"),
        ("assistant", "4"),
        ("user", "Add\n\n2 and 3"),
        ("assistant", "5"),
    ]
    assert rec.meta == {"source": "math"}
    assert rec.origin == "f:1" and rec.text is None


def test_alpaca_empty_input_is_not_appended():
    rec = to_record("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"}, "f:1")
    assert msgs(rec) == [("user", "Say hi"), ("assistant", "hi")]


def test_alpaca_bad_history_pair():
    row = {"instruction": "q", "output": "a", "history": [["only one"]]}
    with pytest.raises(RowProblem, match=r"history\[0\]: expected a \[user, assistant\] pair"):
        to_record("alpaca", row, "f:1")


def test_sharegpt_roles_system_and_function_calls_kept_as_text():
    rec = to_record("sharegpt", SHAREGPT, "f:1")
    assert msgs(rec) == [
        ("system", "Be terse."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Weather?"),
        ("assistant", '{"name": "weather"}'),
        ("tool", "sunny"),
        ("assistant", "Sunny."),
    ]


def test_sharegpt_unknown_from_names_role_and_allowed():
    row = {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]}
    with pytest.raises(RowProblem) as e:
        to_record("sharegpt", row, "f:1")
    assert "conversations[0].from: unknown role 'narrator'" in str(e.value)
    assert "human" in str(e.value) and "gpt" in str(e.value)


def test_messages_multi_turn_and_tool_calls_kept_as_json():
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    row = {
        "messages": [
            {"role": "user", "content": "call f"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "function", "content": "result"},
            {"role": "assistant", "content": "done", "tool_calls": calls},
        ],
        "tools": ["f"],
    }
    rec = to_record("messages", row, "f:1")
    compact = json.dumps(calls, separators=(",", ":"))
    assert msgs(rec) == [
        ("user", "call f"),
        ("assistant", compact),
        ("tool", "result"),
        ("assistant", "done\n" + compact),
    ]
    assert json.loads(rec.messages[1].content) == calls  # nothing lost
    assert rec.meta == {"tools": ["f"]}


def test_messages_text_parts_are_joined():
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": "c"},
        ]
    }
    assert msgs(to_record("messages", row, "f:1"))[0] == ("user", "ab")


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        (
            [{"role": "bot", "content": "x"}],
            "messages[0].role: unknown role 'bot' (allowed: system",
        ),
        ([{"role": "user", "content": 3}], "messages[0].content: expected a string, got int"),
        ([{"role": "user", "content": None}], "messages[0].content: null content"),
        ([{"content": "x"}], "messages[0]: missing 'role'"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], "messages[1]"),
        ([{"role": "user", "content": "q"}], "no assistant turn"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "a"},
            ],
            "messages[1]: a system message must come first",
        ),
        ("not a list", "messages: expected a list, got str"),
        ([], "messages: empty list"),
        (["hi"], "messages[0]: expected an object, got str"),
    ],
)
def test_messages_validation_problems(messages, problem):
    with pytest.raises(RowProblem) as e:
        to_record("messages", {"messages": messages}, "f:1")
    assert problem in str(e.value)


def test_text_format_and_kind():
    rec = to_record("text", TEXT, "f:1", kind="text")
    assert rec.text == "Once upon a time." and rec.messages is None and rec.meta == {"id": 7}
    with pytest.raises(RowProblem, match="format text has no conversation; use stage pt"):
        to_record("text", TEXT, "f:1", kind="chat")
    with pytest.raises(RowProblem, match="text: empty"):
        to_record("text", {"text": " \n"}, "f:1", kind="text")
    rec = to_record("text", {"body": "doc"}, "f:1", kind="text", text_field="body")
    assert rec.text == "doc"


def test_chat_rows_become_text_for_kind_text():
    rec = to_record("messages", MESSAGES, "f:1", kind="text")
    assert rec.text == "You are helpful.\n\nHi\n\nHello" and rec.messages is None
    # pre-training does not need an assistant turn
    rec = to_record(
        "messages", {"messages": [{"role": "user", "content": "x"}]}, "f:1", kind="text"
    )
    assert rec.text == "x"


# --- detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fmt"),
    [(ALPACA, "alpaca"), (SHAREGPT, "sharegpt"), (MESSAGES, "messages"), (TEXT, "text")],
)
def test_detect_each_format(row, fmt):
    assert detect_format([row], "f.jsonl") == fmt


def test_detect_votes_past_a_malformed_first_row():
    assert detect_format([{"junk": 1}, MESSAGES, MESSAGES], "f.jsonl") == "messages"


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference data (chosen/rejected)"),
        ({"conversations": [], "chosen": {}, "rejected": {}}, "use a preference stage"),
        ({"prompt": "p", "completion": "c", "label": True}, "KTO data"),
    ],
)
def test_preference_like_data_is_refused(tmp_path, row, needle):
    path = write_jsonl(tmp_path / "pref.jsonl", [row, row])
    with pytest.raises(StropError) as e:
        load_records(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_unknown_keys_error_names_file_keys_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(StropError) as e:
        load_records(path)
    msg = str(e.value)
    assert str(path) in msg and "'question'" in msg and "'answer'" in msg
    assert "sharegpt" in msg and "alpaca" in msg


# --- file types ------------------------------------------------------------------------------


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        return write_jsonl(path, rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize(
    ("row", "fmt"),
    [(ALPACA, "alpaca"), (SHAREGPT, "sharegpt"), (MESSAGES, "messages")],
)
def test_auto_detection_for_each_file_type(tmp_path, suffix, row, fmt):
    path = _write(tmp_path / f"data{suffix}", [row, row, row])
    result = load_records(path)
    assert result.format == fmt and result.total_rows == 3 and not result.bad
    assert len(result.records) == 3
    assert result.records[0].messages == to_record(fmt, row, "x").messages


def test_origins_per_file_type(tmp_path):
    json_path = _write(tmp_path / "d.json", [MESSAGES, MESSAGES])
    pq_path = _write(tmp_path / "d.parquet", [TEXT, TEXT])
    assert [r.origin for r in read_rows(json_path)] == [
        f"{json_path}:item 1",
        f"{json_path}:item 2",
    ]
    assert [r.origin for r in read_rows(pq_path)][-1] == f"{pq_path}:row 2"


def test_json_with_data_key_and_bad_top_level(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [TEXT]}), encoding="utf-8")
    assert load_records(path, kind="text").records[0].text == TEXT["text"]
    path.write_text(json.dumps({"rows": [TEXT]}), encoding="utf-8")
    with pytest.raises(StropError, match="expected a JSON list"):
        load_records(path)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(StropError, match="invalid JSON at line 1"):
        load_records(path)


def test_csv_alpaca_and_text_with_multiline_fields(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["instruction", "input", "output", "tag"])
        w.writerow(["Add", "", "5", "a"])
        w.writerow(["Poem", "two\nlines", "ok", "b"])
        w.writerow(["Short row"])
        w.writerow(["Last", "", "yes", "c"])
    result = load_records(path, max_bad_fraction=1.0)
    assert result.format == "alpaca" and result.total_rows == 4
    assert msgs(result.records[0]) == [("user", "Add"), ("assistant", "5")]
    assert result.records[0].meta == {"tag": "a"}
    assert result.records[1].messages[0] == Message("user", "Poem\n\ntwo\nlines")
    # the multi-line field shifts later rows: origins are the line each row starts on
    assert [b.origin for b in result.bad] == [f"{path}:5"]
    assert "expected 4 fields" in result.bad[0].problem
    assert result.records[2].origin == f"{path}:6"


def test_csv_text_for_pt(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text\nfirst doc\nsecond doc\n", encoding="utf-8")
    result = load_records(path, kind="text")
    assert result.format == "text" and [r.text for r in result.records] == [
        "first doc",
        "second doc",
    ]


def test_explicit_format_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{**MESSAGES, "text": "t"}])
    assert load_records(path, kind="text").format == "messages"
    assert load_records(path, "text", kind="text").records[0].text == "t"
    with pytest.raises(StropError, match="data.format 'nope'"):
        load_records(path, "nope")


def test_text_data_for_chat_stage_fails_with_hint(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [TEXT, TEXT])
    with pytest.raises(StropError, match="use stage pt"):
        load_records(path, kind="chat")


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(StropError, match="no such file") as e:
        load_records(tmp_path / "absent.jsonl")
    assert "absent.jsonl" in str(e.value)
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(StropError, match=r"d.txt: unsupported file type '\.txt'"):
        load_records(tmp_path / "d.txt")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(StropError, match="no rows found"):
        load_records(path)


def test_multiple_files_are_concatenated(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [MESSAGES])
    b = _write(tmp_path / "b.json", [ALPACA, ALPACA])
    result = load_records([a, b])
    assert result.total_rows == 3 and result.format == "messages,alpaca"
    assert [r.origin for r in result.records] == [f"{a}:1", f"{b}:item 1", f"{b}:item 2"]
