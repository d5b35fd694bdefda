"""`strop prepare` with an output.dir (or input) it cannot use: one sentence naming the key
and the path, exit code 2, never a traceback (DESIGN.md §1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from strop.data.prepare import load_prepare_config, run_prepare
from strop.errors import StropError


def strop(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STROP_DEBUG"}
    cmd = [sys.executable, "-m", "strop.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(5)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "prep.yaml").write_text("inputs: [in.jsonl]\noutput: {dir: out}\n")
    (tmp_path / "a-file").write_text("not a directory\n")
    return tmp_path


@pytest.mark.parametrize(
    ("override", "sentence"),
    [
        ("output.dir=a-file", "output.dir: a-file is an existing file, not a directory"),
        ("output.dir=a-file/sub", "output.dir: cannot create a-file/sub, because a-file is a file"),
        ("inputs=[out]", "out: not a regular file."),
    ],
)
def test_an_unusable_path_is_one_sentence(workdir: Path, override: str, sentence: str):
    (workdir / "out").mkdir()
    proc = strop(workdir, "prepare", "prep.yaml", override)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("strop: error: ") and sentence in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one sentence, no traceback


def test_an_output_file_that_is_a_directory_is_one_sentence(workdir: Path):
    (workdir / "out" / "data.jsonl").mkdir(parents=True)
    proc = strop(workdir, "prepare", "prep.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "output.dir: cannot write out/data.jsonl: Is a directory." in proc.stderr


def test_a_read_only_output_dir_is_one_sentence(workdir: Path, monkeypatch):
    out = workdir / "read-only"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the write fail as it would for a user
            real_touch = Path.touch

            def touch(self, *args, **kwargs):
                if self.parent == out:
                    raise PermissionError(13, "Permission denied", str(self))
                return real_touch(self, *args, **kwargs)

            monkeypatch.setattr(Path, "touch", touch)
        monkeypatch.chdir(workdir)
        cfg, steps = load_prepare_config("prep.yaml", [f"output.dir={out}"])
        with pytest.raises(StropError) as err:
            run_prepare(cfg, steps, log=lambda _: None)
        assert str(err.value) == (
            f"output.dir: cannot write to {out} (Permission denied); choose a writable output.dir."
        )
    finally:
        out.chmod(0o755)
