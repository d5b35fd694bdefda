"""The quickstart's events dataset: deterministic, committed copy in sync, well-formed, held out."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from strop.eval.extraction import FIELDS, parse_json_object

EVENTS_DIR = Path(__file__).resolve().parents[2] / "examples" / "events"
ALLOWED = {
    "share_buyback",
    "executive_shareholding_increase",
    "executive_shareholding_decrease",
    "major_contract",
    "equity_pledge",
    "dividend",
    "none",
}


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location(
        "events_generate_data", EVENTS_DIR / "generate_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(gen, out: Path, *args: str) -> tuple[bytes, bytes]:
    assert gen.main(["--out-dir", str(out), *args]) == 0
    return (out / "train.jsonl").read_bytes(), (out / "eval.jsonl").read_bytes()


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_is_byte_identical_and_other_seed_differs(gen, tmp_path):
    a = _run(gen, tmp_path / "a")
    b = _run(gen, tmp_path / "b", "--seed", "0")
    c = _run(gen, tmp_path / "c", "--seed", "1")
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]


def test_committed_files_match_default_generation(gen, tmp_path):
    train, evl = _run(gen, tmp_path)
    assert (EVENTS_DIR / "train.jsonl").read_bytes() == train, "rerun generate_data.py"
    assert (EVENTS_DIR / "eval.jsonl").read_bytes() == evl, "rerun generate_data.py"


@pytest.mark.parametrize("name", ["train.jsonl", "eval.jsonl"])
def test_rows_are_well_formed(gen, name):
    rows = _load(EVENTS_DIR / name)
    for row in rows:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert msgs[0]["content"] == gen.SYSTEM
        answer = msgs[2]["content"]
        target = json.loads(answer)
        assert tuple(target) == FIELDS
        assert parse_json_object(answer) == target
        assert answer == json.dumps(target, ensure_ascii=False, separators=(", ", ": "))
        assert target["event_type"] in ALLOWED and target["event_type"] == row["event_type"]
        assert len(target["stock_code"]) == 6 and target["stock_code"].isdigit()
        assert target["company"] in msgs[1]["content"]
        if target["event_type"] == "none":
            assert target["date"] is None and target["amount"] is None
        if target["amount"] is not None:
            value, unit = target["amount"].split(" ")
            assert value.isdigit() and unit in {"CNY", "USD", "HKD", "shares"}
        if target["date"] is not None:
            y, m, d = target["date"].split("-")
            assert len(y) == 4 and 1 <= int(m) <= 12 and 1 <= int(d) <= 31
        assert 40 <= len(msgs[1]["content"].split()) <= 120
        assert sum(len(m["content"]) for m in msgs) < 1100


def test_eval_is_held_out():
    train, evl = _load(EVENTS_DIR / "train.jsonl"), _load(EVENTS_DIR / "eval.jsonl")
    train_text = {r["messages"][1]["content"] for r in train}
    assert not any(r["messages"][1]["content"] in train_text for r in evl)
    companies = {json.loads(r["messages"][2]["content"])["company"] for r in train}
    assert not any(json.loads(r["messages"][2]["content"])["company"] in companies for r in evl)


def test_class_balance():
    for name, total in (("train.jsonl", 400), ("eval.jsonl", 80)):
        counts = Counter(r["event_type"] for r in _load(EVENTS_DIR / name))
        assert sum(counts.values()) == total
        assert set(counts) == ALLOWED
        assert 0.08 <= counts["none"] / total <= 0.12
        for event in ALLOWED - {"none"}:
            assert 0.12 <= counts[event] / total <= 0.18
