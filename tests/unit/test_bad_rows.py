"""Conversations a chat template cannot render are bad rows, not tracebacks (DESIGN.md §5).

Two layers: rules every template needs (the first turn after any system message is the user's;
an assistant turn exists) are checked when a row is read, with ``file:line: field: reason``;
what only a given template refuses (a role it does not know, turns that do not alternate) is
found when rendering, and the row joins the quarantine and the bad-row count all the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from strop.config.schema import DataSection
from strop.data.dataset import build_datasets
from strop.data.records import Message, Record
from strop.data.render import TemplateProblem, tokenize_records
from strop.data.validate import load_records
from strop.errors import StropError

N_GOOD = 20


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def good_row(i: int, like: dict | None = None) -> dict:
    """A good row, in the layout of ``like`` (messages by default)."""
    if like is not None and "conversations" in like:
        turns = [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"a {i}"}]
        return {"conversations": turns}
    return {"messages": msgs(("user", f"question {i}"), ("assistant", f"answer {i}"))}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# The row appended after N_GOOD good ones -> words its problem must contain.
OPENS_WRONG = {
    "messages, assistant first": (
        {
            "messages": msgs(
                ("assistant", "Hello!"), ("user", "hi"), ("assistant", "How can I help?")
            )
        },
        "messages[0]: the conversation opens with an assistant turn",
    ),
    "sharegpt, gpt first": (
        {
            "conversations": [
                {"from": "gpt", "value": "Hello!"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "How can I help?"},
            ]
        },
        "conversations[0]: the conversation opens with an assistant turn",
    ),
    "assistant right after the system message": (
        {"messages": msgs(("system", "Be brief."), ("assistant", "Ready."))},
        "messages[1]: the conversation opens with an assistant turn",
    ),
    "tool result first": (
        {"messages": msgs(("tool", '{"temp": 21}'), ("assistant", "It is 21 degrees."))},
        "messages[0]: the conversation opens with a tool turn",
    ),
    "no assistant turn": (
        {"messages": msgs(("user", "anyone there?"))},
        "conversation has no assistant turn",
    ),
}


@pytest.mark.parametrize("case", list(OPENS_WRONG))
def test_a_conversation_that_does_not_open_with_the_user_is_a_bad_row(tmp_path: Path, case: str):
    bad, needle = OPENS_WRONG[case]
    rows = [good_row(i, like=bad) for i in range(N_GOOD)] + [bad]
    data = write_rows(tmp_path / "train.jsonl", rows)
    quarantine = tmp_path / "quarantine.jsonl"
    result = load_records(data, quarantine_path=quarantine, max_bad_fraction=0.1)
    assert len(result.records) == N_GOOD
    assert [b.origin for b in result.bad] == [f"{data}:{N_GOOD + 1}"]
    assert needle in result.bad[0].problem
    (entry,) = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert entry["origin"] == f"{data}:{N_GOOD + 1}" and needle in entry["problem"]
    # counted like every other bad row: 1 of 21 is more than the default 1%
    with pytest.raises(StropError) as err:
        load_records(data)
    assert f"{data}:{N_GOOD + 1}: {needle}" in str(err.value)


def test_pretraining_reads_any_turn_order(tmp_path: Path):
    """Stage pt joins the words and renders no template, so the opening turn does not matter."""
    rows = [OPENS_WRONG[k][0] for k in ("messages, assistant first", "sharegpt, gpt first")]
    data = write_rows(tmp_path / "pt.jsonl", rows[:1])
    assert load_records(data, kind="text").records[0].text.startswith("Hello!")


def test_a_record_made_in_code_that_opens_with_the_assistant_is_one_sentence():
    rec = Record(
        "made:1",
        messages=[Message("assistant", "Hi"), Message("user", "q"), Message("assistant", "a")],
    )
    tok = _tokenizer()
    with pytest.raises(TemplateProblem) as err:
        tokenize_records(tok, [rec], mask="assistant", max_length=64, truncation="right")
    assert isinstance(err.value, StropError)
    assert str(err.value).startswith(
        "made:1: messages[0]: the conversation opens with an assistant"
    )


# A template that refuses what real ones refuse (Mistral/Llama-2 style): unknown roles, and
# user/assistant turns that do not alternate.
STRICT = (
    "{%- set ns = namespace(n=0) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] }}\n"
    "{%- else -%}"
    "{%- if m['role'] not in ['user', 'assistant'] -%}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{%- endif -%}"
    "{%- if (m['role'] == 'user') != (ns.n % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{%- endif -%}"
    "{%- set ns.n = ns.n + 1 -%}"
    "[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '[assistant] ' }}{%- endif -%}"
)

_TOKENIZERS: dict[str, object] = {}


def _tokenizer(template: str | None = None):
    from strop.hub import resolve_model

    if "base" not in _TOKENIZERS:
        _TOKENIZERS["base"] = AutoTokenizer.from_pretrained(resolve_model("tiny-llama"))
    tok = _TOKENIZERS["base"]
    if template is not None:
        tok = AutoTokenizer.from_pretrained(resolve_model("tiny-llama"))
        tok.chat_template = template
    return tok


UNRENDERABLE = [
    (
        {"messages": msgs(("user", "weather?"), ("tool", "21C"), ("assistant", "Warm."))},
        "Only user and assistant roles are supported",
    ),
    (
        {"messages": msgs(("user", "one"), ("user", "two"), ("assistant", "three"))},
        "Conversation roles must alternate",
    ),
]


def _data(tmp_path: Path, **kw) -> tuple[Path, DataSection]:
    rows = [good_row(i) for i in range(N_GOOD)] + [row for row, _ in UNRENDERABLE]
    path = write_rows(tmp_path / "train.jsonl", rows)
    section = {"train": str(path), "eval": None, "max_length": 128, "packing": False, **kw}
    return path, DataSection(**section)


def test_what_the_template_cannot_render_is_quarantined_and_counted(tmp_path: Path):
    path, data = _data(tmp_path, max_bad_fraction=0.1)
    out = build_datasets(data, "sft", _tokenizer(STRICT), seed=0, run_dir=tmp_path)
    assert len(out.train.samples) == N_GOOD
    entries = [
        json.loads(x) for x in (tmp_path / "quarantine-train.jsonl").read_text().split("\n") if x
    ]
    assert [e["origin"] for e in entries] == [f"{path}:{N_GOOD + 1}", f"{path}:{N_GOOD + 2}"]
    for entry, (row, needle) in zip(entries, UNRENDERABLE, strict=True):
        assert "chat template cannot render this conversation" in entry["problem"]
        assert needle in entry["problem"]
        assert json.loads(entry["raw"])["messages"] == row["messages"]
    assert out.summaries[0].startswith(f"{path}: {N_GOOD} records read, 2 bad (9.1%)")
    assert f"{path}:{N_GOOD + 1}: the model's chat template cannot render" in out.summaries[0]


def test_too_many_unrenderable_rows_stop_with_the_summary(tmp_path: Path):
    path, data = _data(tmp_path)  # default max_bad_fraction 1%
    with pytest.raises(StropError) as err:
        build_datasets(data, "sft", _tokenizer(STRICT), seed=0, run_dir=tmp_path)
    msg = str(err.value)
    assert "2 bad" in msg and "max_bad_fraction=0.01" in msg
    assert f"{path}:{N_GOOD + 2}: the model's chat template cannot render" in msg
    assert len((tmp_path / "quarantine-train.jsonl").read_text().splitlines()) == 2


def test_unrenderable_rows_held_out_for_eval_count_for_the_train_file(tmp_path: Path):
    path, data = _data(tmp_path, max_bad_fraction=0.1, eval=0.5)
    out = build_datasets(data, "sft", _tokenizer(STRICT), seed=0, run_dir=tmp_path)
    assert len(out.train.samples) + len(out.eval.samples) == N_GOOD
    assert out.summaries == [out.summaries[0]] and ", 2 bad" in out.summaries[0]


def test_an_unrenderable_preference_pair_is_a_bad_row(tmp_path: Path):
    rows = [
        {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(N_GOOD)
    ]
    rows.append(
        {
            "prompt": msgs(("user", "weather?"), ("tool", "21C")),
            "chosen": "Warm.",
            "rejected": "Cold.",
        }
    )
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    data = DataSection(train=str(path), eval=None, max_length=128, max_bad_fraction=0.1)
    out = build_datasets(data, "dpo", _tokenizer(STRICT), seed=0, run_dir=tmp_path)
    assert len(out.train.rows) == N_GOOD
    (entry,) = [json.loads(x) for x in (tmp_path / "quarantine-train.jsonl").open()]
    assert entry["origin"] == f"{path}:{N_GOOD + 1}"
    assert "Only user and assistant roles are supported" in entry["problem"]
