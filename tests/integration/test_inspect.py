"""`strop data inspect` end to end through the CLI, on tiny-llama, without a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROWS = [
    [("user", "What is the capital of France?"), ("assistant", "Paris is the capital.")],
    [("system", "Be terse."), ("user", "Two plus two?"), ("assistant", "Four.")],
    [
        ("user", "Name a colour."),
        ("assistant", "Blue."),
        ("user", "Another?"),
        ("assistant", "Red."),
    ],
]


def write_data(tmp_path: Path, max_length: int = 256) -> Path:
    lines = [json.dumps({"messages": [{"role": r, "content": c} for r, c in row]}) for row in ROWS]
    lines.append("{not json")  # one bad row: reported, not fatal under max_bad_fraction
    (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model: {name: tiny-llama}\nstage: sft\n"
        f"data: {{train: chat.jsonl, eval: null, max_length: {max_length}, "
        "max_bad_fraction: 0.5}\n"
    )
    return cfg


def inspect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "strop.cli", "data", "inspect", "cfg.yaml", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_inspect_shows_counts_and_marks_only_answers(tmp_path: Path, tiny_llama_dir):
    write_data(tmp_path)
    res = inspect(tmp_path, "--samples", "3")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "chat.jsonl: 3 records read, 1 bad" in out
    assert "chat.jsonl:4: invalid JSON" in out
    assert "train: 3 records -> 3 samples" in out
    assert "truncated 0; dropped 0" in out
    assert "rows: 1 (packed)" in out  # three short samples fit one 256-token row
    assert "sample 3/3: chat.jsonl:3" in out
    assert "\x1b[" not in out  # plain text, no colour codes
    # each answer and its end-of-turn token is one trained span; prompts are outside every span
    for answer in ("Paris is the capital.", "Four.", "Blue.", "Red."):
        assert f"[[{answer}<|eot_id|>]]" in out
    shown = out[out.index("--- sample 1/3") :]  # past the legend, which shows a marker too
    assert shown.count("[[") == shown.count("]]") == 4
    for prompt in ("What is the capital of France?", "Be terse.", "Two plus two?", "Another?"):
        line = next(x for x in out.splitlines() if prompt in x)
        before = line[: line.index(prompt)]
        assert before.count("[[") == before.count("]]"), line
    assert "[[<|start_header_id|>" not in out and "[[<|begin_of_text|>" not in out


def test_inspect_reports_truncation_drops(tmp_path: Path, tiny_llama_dir):
    write_data(tmp_path)
    # 20 tokens end inside every prompt: nothing is left to train, so every sample is dropped
    # (and the train split is empty: a clear error, exit 2)
    res = inspect(tmp_path, "data.max_length=20", "--samples", "0")
    assert res.returncode == 2
    assert "no trainable sample left" in res.stderr
    assert "3 with no target left" in res.stderr
    # 45 tokens keep the short conversation's answer only
    res = inspect(tmp_path, "data.max_length=45", "--samples", "1")
    assert res.returncode == 0, res.stderr
    assert "dropped chat.jsonl:" in res.stdout
    assert "no target token left after truncation" in res.stdout


def test_preference_rows_show_both_documents_with_their_targets(tmp_path):
    pair = {"prompt": "Who are you?", "chosen": "I am Kestrel.", "rejected": "I am Max."}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    (tmp_path / "cfg.yaml").write_text(
        "model: {name: tiny-llama}\nstage: dpo\ndata: {train: pairs.jsonl, eval: null}\n"
    )
    out = inspect(tmp_path, "-n", "1")
    assert out.returncode == 0, out.stderr
    assert "train: 1 rows" in out.stdout
    assert "row 0 chosen" in out.stdout and "row 0 rejected" in out.stdout
    assert "[[I am Kestrel.<|eot_id|>]]" in out.stdout
    assert "[[I am Max.<|eot_id|>]]" in out.stdout
    assert "[[Who are you?" not in out.stdout  # the prompt never trains
