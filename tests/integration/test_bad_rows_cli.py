"""Through the CLI (and `strop data inspect`'s command function): a conversation the chat template cannot render is a bad row with
``file:line`` and a reason (quarantined, counted against data.max_bad_fraction), never a
traceback, in `strop train`, `strop data inspect` and `strop prepare`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from strop.errors import StropError
from tests.unit.test_bad_rows import STRICT, good_row, msgs, write_rows

N_GOOD = 40


def strop(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("STROP_DEBUG", None)
    cmd = [sys.executable, "-m", "strop.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def write_config(tmp_path: Path, bad: dict, model: str = "tiny-llama") -> Path:
    like = bad if "conversations" in bad else None
    write_rows(tmp_path / "train.jsonl", [good_row(i, like) for i in range(N_GOOD)] + [bad])
    (tmp_path / "cfg.yaml").write_text(
        f"model: {{name: {model}}}\nstage: sft\nmethod: {{name: full}}\n"
        "data: {train: train.jsonl, eval: null, max_length: 64, packing: false}\n"
        "train: {output_dir: run, max_steps: 1, batch_size: 4, progress: false, "
        "tensorboard: false, precision: fp32, save_every: 0, eval_every: 0}\n"
    )
    return tmp_path / "cfg.yaml"


GPT_FIRST = {
    "conversations": [
        {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "hi"},
        {"from": "gpt", "value": "How can I help?"},
    ]
}
REASON = "conversations[0]: the conversation opens with an assistant turn"


def test_train_treats_an_assistant_first_row_as_a_bad_row(tmp_path: Path):
    write_config(tmp_path, GPT_FIRST)
    # the run trains on the rest (the row used to kill it whatever the threshold), the summary
    # names the row, and the row is in the quarantine
    proc = strop(tmp_path, "train", "cfg.yaml", "data.max_bad_fraction=0.05")
    assert proc.returncode == 0, proc.stderr
    assert f"train.jsonl:{N_GOOD + 1}: {REASON}" in proc.stdout + proc.stderr
    (entry,) = [json.loads(x) for x in (tmp_path / "run" / "quarantine-train.jsonl").open()]
    assert entry["origin"] == f"train.jsonl:{N_GOOD + 1}" and REASON in entry["problem"]


def test_inspect_treats_an_assistant_first_row_as_a_bad_row(tmp_path: Path, monkeypatch):
    from strop.commands.inspect import inspect_command

    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, GPT_FIRST)
    # 1 bad row of 41 is more than the default 1%: the CLI prints this as one sentence, exit 2
    with pytest.raises(StropError) as err:
        inspect_command("cfg.yaml", [], samples=0)
    assert f"train.jsonl:{N_GOOD + 1}: {REASON}" in str(err.value)
    assert "max_bad_fraction=0.01" in str(err.value)


def test_a_role_the_template_refuses_is_a_bad_row(tmp_path: Path, tiny_llama_dir):
    model = tmp_path / "strict-model"
    shutil.copytree(tiny_llama_dir, model)
    (model / "chat_template.jinja").write_text(STRICT)
    tool = {"messages": msgs(("user", "weather?"), ("tool", "21C"), ("assistant", "Warm."))}
    write_config(tmp_path, tool, model=str(model))
    proc = strop(tmp_path, "data", "inspect", "cfg.yaml", "data.max_bad_fraction=0.05")
    assert proc.returncode == 0, proc.stderr
    assert f"train.jsonl: {N_GOOD} records read, 1 bad (2.4%)" in proc.stdout
    assert f"train.jsonl:{N_GOOD + 1}: the model's chat template cannot render" in proc.stdout
    assert "Only user and assistant roles are supported" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_prepare_quarantines_an_assistant_first_row(tmp_path: Path):
    write_rows(tmp_path / "in.jsonl", [good_row(i, GPT_FIRST) for i in range(N_GOOD)] + [GPT_FIRST])
    (tmp_path / "prep.yaml").write_text(
        "inputs: [in.jsonl]\noutput: {dir: out}\nmax_bad_fraction: 0.05\nsteps: [normalise]\n"
    )
    proc = strop(tmp_path, "prepare", "prep.yaml")
    assert proc.returncode == 0, proc.stderr
    assert f"{N_GOOD + 1} rows read (1 malformed), {N_GOOD} records written" in proc.stdout
    (entry,) = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").open()]
    assert entry["origin"] == f"in.jsonl:{N_GOOD + 1}" and REASON in entry["reason"]
    # the default threshold (1%) stops with the count and where the rows are listed
    proc = strop(tmp_path, "prepare", "prep.yaml", "max_bad_fraction=0.01")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1 of 41 rows are malformed" in proc.stderr
