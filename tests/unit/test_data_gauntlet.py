"""The malformed-data gauntlet: every kind of bad row is reported at its exact line, quarantined,
and counted, good rows survive, and too many bad rows stop loading with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.data.validate import load_records
from strop.errors import StropError


def good(i: int) -> bytes:
    row = {
        "messages": [
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": f"a{i}"},
        ]
    }
    return json.dumps(row).encode()


def conv(*turns: tuple[str, object]) -> bytes:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}).encode()


# line number (1-based, counting the blank line) -> (raw bytes, words the problem must contain)
BAD = {
    3: (b'{"messages": [', "invalid JSON"),
    5: (b'{"messages": "caf\xe9"}', "invalid UTF-8 at byte"),
    6: (b"[1, 2, 3]", "expected a JSON object, got list"),
    8: (b'{"conversation": []}', "missing required field 'messages'"),
    9: (conv(("user", "q"), ("bot", "a")), "messages[1].role: unknown role 'bot'"),
    11: (conv(("user", "q"), ("assistant", "   ")), "messages[1]: assistant content is empty"),
    12: (conv(("user", "q"), ("assistant", 42)), "messages[1].content: expected a string, got int"),
    13: (conv(("system", "s"), ("user", "q")), "no assistant turn"),
    14: (b"17", "expected a JSON object, got int"),
}
GOOD_LINES = [1, 2, 4, 7, 15, 16]
BLANK_LINE = 10


def write_gauntlet(path: Path) -> Path:
    lines = []
    for n in range(1, 17):
        if n in BAD:
            lines.append(BAD[n][0])
        elif n == BLANK_LINE:
            lines.append(b"   ")
        else:
            lines.append(good(n))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def gauntlet(tmp_path: Path) -> Path:
    return write_gauntlet(tmp_path / "train.jsonl")


def test_every_bad_row_is_reported_at_its_line(gauntlet: Path, tmp_path: Path):
    quarantine = tmp_path / "out" / "quarantine.jsonl"
    result = load_records(gauntlet, quarantine_path=quarantine, max_bad_fraction=1.0)

    assert result.format == "messages"
    assert result.total_rows == len(BAD) + len(GOOD_LINES)  # the blank line is not a row
    assert [b.origin for b in result.bad] == [f"{gauntlet}:{n}" for n in BAD]
    for b, (_, needle) in zip(result.bad, BAD.values(), strict=True):
        assert needle in b.problem, (b.origin, b.problem)

    # good rows survive, in order, with their origins
    assert [r.origin for r in result.records] == [f"{gauntlet}:{n}" for n in GOOD_LINES]
    assert [r.messages[0].content for r in result.records] == [f"q{n}" for n in GOOD_LINES]

    # the quarantine file holds exactly the bad rows
    rows = [json.loads(line) for line in quarantine.read_text(encoding="utf-8").splitlines()]
    assert [r["origin"] for r in rows] == [b.origin for b in result.bad]
    assert [r["problem"] for r in rows] == [b.problem for b in result.bad]
    assert rows[2]["raw"] == "[1, 2, 3]"
    assert "caf" in rows[1]["raw"]  # undecodable bytes are replaced, not lost

    summary = result.summary()
    assert summary.startswith(f"{gauntlet}: {len(GOOD_LINES)} records read, {len(BAD)} bad (60.0%)")
    assert f"see {quarantine}" in summary
    assert f"{gauntlet}:3: invalid JSON" in summary
    assert "... and 4 more" in summary


def test_too_many_bad_rows_stop_with_the_summary(gauntlet: Path, tmp_path: Path):
    quarantine = tmp_path / "quarantine.jsonl"
    with pytest.raises(StropError) as e:
        load_records(gauntlet, quarantine_path=quarantine)
    msg = str(e.value)
    assert str(gauntlet) in msg
    assert f"{len(BAD)} bad" in msg and "60.0%" in msg and "1.0%" in msg
    assert f"{gauntlet}:3: invalid JSON" in msg and str(quarantine) in msg
    # the quarantine is written even when loading stops, so the user can inspect it
    assert len(quarantine.read_text().splitlines()) == len(BAD)


def test_threshold_is_a_share_of_all_rows(gauntlet: Path):
    share = len(BAD) / (len(BAD) + len(GOOD_LINES))
    assert len(load_records(gauntlet, max_bad_fraction=share).bad) == len(BAD)
    with pytest.raises(StropError):
        load_records(gauntlet, max_bad_fraction=share - 0.01)


def test_clean_data_removes_a_stale_quarantine(tmp_path: Path):
    path = tmp_path / "clean.jsonl"
    path.write_bytes(b"\n".join(good(i) for i in range(5)) + b"\n")
    quarantine = tmp_path / "quarantine.jsonl"
    quarantine.write_text("stale\n")
    result = load_records(path, quarantine_path=quarantine)
    assert len(result.records) == 5 and not result.bad and not quarantine.exists()
    assert result.summary() == f"{path}: 5 records read, 0 bad"


def test_one_bad_row_in_a_hundred_passes_the_default_threshold(tmp_path: Path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join([*(good(i) for i in range(99)), b"{oops"]) + b"\n")
    result = load_records(path)
    assert len(result.records) == 99 and [b.origin for b in result.bad] == [f"{path}:100"]
    assert "(1.0%)" in result.summary()
