"""Every verb's output path is checked before any work: a file where a directory belongs, a
directory where a file belongs, or a path under a file is one sentence naming the key, exit 2
(found by benchmarks/reliability_probe.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers import strop_error


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    return path


def test_eval_output_dir_that_is_a_file(tmp_path, afile):
    cfg = tmp_path / "e.yaml"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "hello there"}) + "\n")
    tasks = [{"name": "p", "type": "perplexity", "data": str(data), "kind": "text"}]
    cfg.write_text(
        yaml.safe_dump(
            {"models": {"m": {"model": "tiny-llama"}}, "tasks": tasks, "output_dir": str(afile)}
        )
    )
    line = strop_error(["eval", str(cfg)], 2)
    assert f"output_dir: {afile} is an existing file" in line


@pytest.mark.parametrize("where", ["file", "under"])
def test_merge_output_dir_that_is_or_lies_under_a_file(tmp_path, afile, where):
    out = afile if where == "file" else afile / "sub"
    cfg = tmp_path / "m.yaml"
    models = [{"model": "tiny-llama", "name": "a"}, {"model": "tiny-llama", "name": "b"}]
    cfg.write_text(
        yaml.safe_dump({"method": "linear", "models": models, "output": {"dir": str(out)}})
    )
    line = strop_error(["merge", str(cfg)], 2)
    assert line.startswith("strop: error: output.dir: ") and str(afile) in line
    assert afile.read_text() == "x"  # the user's file is untouched


@pytest.mark.parametrize("where", ["dir", "under"])
def test_generate_output_that_is_a_directory_or_under_a_file(tmp_path, afile, where):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "hi"}) + "\n")
    out = tmp_path if where == "dir" else afile / "out.jsonl"
    args = ["generate", "-i", str(inp), "-o", str(out), "-m", "tiny-llama", "--max-new-tokens", "2"]
    line = strop_error(args, 2)
    assert line.startswith("strop: error: --output: ")
