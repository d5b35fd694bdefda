"""Preference and KTO data: every accepted layout, every refusal with its file:line reason,
and the masks of pair rows (responses trained with their end-of-turn token, prompts never)."""

from __future__ import annotations

import json
import re

import pytest

from strop.data.batching import collate
from strop.data.formats import RowProblem
from strop.data.pairs import kto_rows, preference_rows
from strop.data.preference_formats import from_kto, from_preference
from strop.data.render import IGNORE
from strop.data.validate import load_records
from strop.errors import StropError
from strop.models.load import load_tokenizer

U, A = "user", "assistant"


def _texts(msgs):
    return [(m.role, m.content) for m in msgs]


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "hi", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad"},
        {"messages": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad"},
        {"instruction": "hi", "chosen": "good", "rejected": "bad"},
        {
            "conversations": [{"from": "human", "value": "hi"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        },
        {  # implicit prompt: two whole conversations sharing their opening
            "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good"}],
            "rejected": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "bad"},
            ],
        },
    ],
)
def test_every_preference_layout_gives_the_same_record(row):
    rec = from_preference(row, "f:1")
    assert _texts(rec.messages) == [(U, "hi")]
    assert _texts(rec.chosen) == [(A, "good")]
    assert _texts(rec.rejected) == [(A, "bad")]


def test_alpaca_input_system_margin_and_multi_turn_prompt():
    rec = from_preference(
        {
            "system": "be brief",
            "instruction": "sum",
            "input": "1 2",
            "chosen": "3",
            "rejected": "4",
            "margin": "0.5",
            "id": 7,
        },
        "f:1",
    )
    assert _texts(rec.messages) == [("system", "be brief"), (U, "sum\n\n1 2")]
    assert rec.meta == {"id": 7, "margin": 0.5}
    # the implicit prompt keeps earlier shared assistant turns and stops before the answers
    conv = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    rec = from_preference(
        {
            "chosen": [*conv, {"role": "assistant", "content": "yes"}],
            "rejected": [*conv, {"role": "assistant", "content": "no"}],
        },
        "f:2",
    )
    assert _texts(rec.messages) == [(U, "a"), (A, "b"), (U, "c")]
    assert _texts(rec.chosen) == [(A, "yes")]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            {"prompt": "q", "chosen": "same", "rejected": "same"},
            "chosen and rejected are identical",
        ),
        ({"prompt": "q", "chosen": "x"}, "missing required field 'rejected'"),
        ({"chosen": "x", "rejected": "y"}, "no prompt field and no shared opening turns"),
        ({"prompt": "q", "chosen": " ", "rejected": "y"}, "chosen: assistant content is empty"),
        ({"prompt": "q", "chosen": "x", "rejected": 3}, "rejected: expected a string"),
        ({"prompt": "q", "chosen": "x", "rejected": "y", "margin": "big"}, "margin: expected"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "chosen": "x",
                "rejected": "y",
            },
            "prompt ends with an assistant turn",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "robot", "content": "x"}], "rejected": "y"},
            "chosen[0].role: unknown role 'robot'",
        ),
    ],
)
def test_bad_preference_rows_say_what_is_wrong(row, problem):
    with pytest.raises(RowProblem, match=re.escape(problem)):
        from_preference(row, "f:1")


def test_kto_layouts_and_labels():
    rec = from_kto({"prompt": "q", "completion": "a", "label": "false"}, "f:1")
    assert (_texts(rec.messages), _texts(rec.completion), rec.label) == (
        [(U, "q")],
        [(A, "a")],
        False,
    )
    rec = from_kto(
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "label": 1,
        },
        "f:2",
    )
    assert (_texts(rec.messages), _texts(rec.completion), rec.label) == (
        [(U, "q")],
        [(A, "a")],
        True,
    )
    with pytest.raises(RowProblem, match="label: expected true/false"):
        from_kto({"prompt": "q", "completion": "a", "label": "maybe"}, "f:3")
    with pytest.raises(RowProblem, match="missing required field 'label'"):
        from_kto({"prompt": "q", "completion": "a"}, "f:4")


def test_load_records_quarantines_bad_pairs_and_refuses_chat_data(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(99)]
    rows.insert(5, {"prompt": "q", "chosen": "x", "rejected": "x"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = load_records(path, kind="preference", quarantine_path=tmp_path / "q.jsonl")
    assert len(res.records) == 99 and res.format == "preference"
    assert res.problems() == [f"{path}:6: chosen and rejected are identical (nothing to prefer)"]
    assert json.loads((tmp_path / "q.jsonl").read_text())["origin"] == f"{path}:6"
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(StropError, match="looks like messages data, but this stage trains on pref"):
        load_records(chat, kind="preference")
    with pytest.raises(StropError, match="looks like preference data"):
        load_records(path, kind="chat")


@pytest.fixture(scope="module")
def tok(tiny_llama_dir):
    return load_tokenizer(tiny_llama_dir)


def test_pair_rows_train_responses_only_with_their_end_of_turn(tok):
    rec = from_preference(
        {
            "prompt": [
                {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "earlier answer"},
                {"role": "user", "content": "and now"},
            ],
            "chosen": "good answer",
            "rejected": "bad",
        },
        "f:1",
    )
    rows, stats = preference_rows(tok, [rec], max_length=512)
    (row,) = rows
    n_c, n_r = row.doc_lens
    for start, n, answer in ((0, n_c, "good answer"), (n_c, n_r, "bad")):
        ids, labels = row.input_ids[start : start + n], row.labels[start : start + n]
        trained = [t for t, y in zip(ids, labels, strict=True) if y != IGNORE]
        text = tok.decode(trained)
        assert text.startswith(answer) and "earlier answer" not in text
        assert trained[-1] == tok.convert_tokens_to_ids("<|eot_id|>")  # the turn's end trains
    # both documents open with the same prompt tokens
    assert row.input_ids[:10] == row.input_ids[n_c : n_c + 10]
    assert row.values == {"margin": 0.0}
    batch = collate(rows * 2, tok.pad_token_id, doc_attention=True, with_docs=True)
    assert batch["strop_doc_index"].unique().tolist() == [0, 1, 2, 3]


def test_pairs_truncated_to_nothing_are_dropped_and_counted(tok):
    long_prompt = " ".join(["word"] * 200)
    recs = [
        from_preference({"prompt": long_prompt, "chosen": "a", "rejected": "b"}, "f:1"),
        from_preference({"prompt": "short", "chosen": "a", "rejected": "b"}, "f:2"),
    ]
    rows, stats = preference_rows(tok, recs, max_length=64)
    assert len(rows) == 1 and stats.dropped_no_target == 1
    assert stats.dropped[0][0] == "f:1:chosen" and "truncated away" in stats.dropped[0][1]


def test_kto_rows_pair_each_example_with_a_mismatched_completion(tok):
    recs = [
        from_kto(
            {"prompt": f"question {i}", "completion": f"answer {i}", "label": i % 2 == 0}, f"f:{i}"
        )
        for i in range(3)
    ]
    rows, _ = kto_rows(tok, recs, max_length=256)
    assert [r.values["label"] for r in rows] == [1.0, 0.0, 1.0]
    for i, row in enumerate(rows):
        own = tok.decode(row.input_ids[: row.doc_lens[0]])
        kl = tok.decode(row.input_ids[row.doc_lens[0] :])
        assert f"question {i}" in own and f"answer {i}" in own
        assert f"question {i}" in kl and f"answer {(i + 1) % 3}" in kl
