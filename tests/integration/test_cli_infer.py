"""`strop generate`, `strop chat` and `strop models` end to end on the tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from strop.cli import app
from strop.errors import StropError
from strop.hub import KNOWN_MODELS

runner = CliRunner()


def strop(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real entry point (main() maps StropError to exit code 2; CliRunner would not)."""
    return subprocess.run(
        [sys.executable, "-m", "strop.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def write_jsonl(path, rows: list) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_generate_writes_one_completion_per_row(tiny_llama_dir, tmp_path):
    rows = [
        {"prompt": "hello", "id": 1},
        {"messages": [{"role": "user", "content": "hi"}], "id": 2, "tag": "x"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "sub" / "out.jsonl"
    result = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_llama_dir),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(out),
            "--max-new-tokens",
            "5",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "generated 3 completions" in result.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 3
    for row, orig in zip(got, rows, strict=True):
        assert isinstance(row["completion"], str)
        assert {k: row[k] for k in orig} == orig  # every input field kept
    assert got[2]["reference"] == "a"
    assert "reference" not in got[0]


def test_generate_matches_library_call(tiny_qwen2_dir, tmp_path):
    from strop.infer import GenerationParams, generate
    from strop.models.load import load_model

    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "abc"}, {"prompt": "a longer one"}])
    result = runner.invoke(
        app,
        [
            "generate",
            "-m",
            str(tiny_qwen2_dir),
            "-i",
            str(tmp_path / "in.jsonl"),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--max-new-tokens",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    model, tok, _ = load_model(str(tiny_qwen2_dir))
    expected = generate(model, tok, ["abc", "a longer one"], GenerationParams(max_new_tokens=6))
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["completion"] for line in lines] == expected


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('{"text": "no prompt"}', "neither"),
        ('{"prompt": 3}', "'prompt' must be a string"),
        ('{"messages": "hi"}', "'messages' must be"),
        ('{"messages": [{"role": "user", "content": 1}]}', "messages[0].content"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
        ("[1, 2]", "JSON object"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "no user turn"),
    ],
)
def test_generate_bad_row_names_file_and_line(tmp_path, line, problem):
    from strop.commands.infer import read_prompts

    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "fine"}\n\n' + line + "\n")  # blank lines are skipped
    with pytest.raises(StropError) as err:
        read_prompts(str(path))
    assert "in.jsonl:3" in str(err.value) and problem in str(err.value)


def test_generate_bad_row_is_exit_2_without_traceback(tiny_llama_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    proc = strop(
        "generate",
        "--model",
        str(tiny_llama_dir),
        "--input",
        "in.jsonl",
        "--output",
        "out.jsonl",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "in.jsonl:2" in proc.stderr and "'prompt' must be a string" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_generate_missing_input_is_exit_2(tiny_llama_dir, tmp_path):
    proc = strop(
        "generate", "-m", str(tiny_llama_dir), "-i", "nope.jsonl", "-o", "o.jsonl", cwd=tmp_path
    )
    assert proc.returncode == 2 and "nope.jsonl" in proc.stderr


def test_chat_with_piped_stdin(tiny_llama_dir):
    proc = strop(
        "chat",
        "--model",
        str(tiny_llama_dir),
        "--max-new-tokens",
        "4",
        stdin="hello\n/reset\nhi\n/exit\nnever read\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("assistant> ") == 2
    assert "history cleared" in proc.stdout


def test_chat_stops_at_end_of_input(tiny_qwen2_dir):
    # No /exit: end of input must end the session cleanly too.
    proc = strop(
        "chat",
        "-m",
        str(tiny_qwen2_dir),
        "--max-new-tokens",
        "3",
        "--system",
        "be brief",
        stdin="one\ntwo\nthree\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("assistant> ") == 3


def test_models_lists_known_names():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in KNOWN_MODELS:
        assert name in result.output
    assert ".gguf" in result.output


def test_chat_sends_the_whole_history_and_reset_clears_it(tiny_llama_dir, monkeypatch):
    import strop.commands.infer as cmd

    seen: list[list[dict]] = []

    def fake_generate(model, tok, prompts, params, system=None, **kwargs):
        seen.append([dict(m) for m in prompts[0]])
        return [f"reply{len(seen)}"]

    monkeypatch.setattr(cmd, "generate", fake_generate)
    result = runner.invoke(app, ["chat", "-m", str(tiny_llama_dir)], input="a\nb\n/reset\nc\n")
    assert result.exit_code == 0, result.output
    assert [len(h) for h in seen] == [1, 3, 1]
    assert seen[1] == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "reply1"},
        {"role": "user", "content": "b"},
    ]
    assert "assistant> reply3" in result.output
