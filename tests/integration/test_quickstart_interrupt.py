"""An interrupted quickstart ends as `strop train` does: one sentence on stderr, no traceback,
exit code 128 + signal (130 for Ctrl-C, 143 for SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def quickstart(tmp_path: Path, **env: str) -> subprocess.Popen:
    """The quickstart on tiny-llama and the first 16 training conversations (fast)."""
    rows = (REPO / "examples/events/train.jsonl").read_text().splitlines()[:16]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    cmd = [
        sys.executable,
        "examples/events/quickstart.py",
        "--eval-n",
        "1",
        "model.name=tiny-llama",
        f"data.train={tmp_path / 'train.jsonl'}",
        "data.eval=null",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=40",
        "train.precision=fp32",
        "train.batch_size=1",
        "train.progress=false",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **env}
    env.pop("STROP_DEBUG", None)
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs with SIGINT ignored; undo that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_sigterm_while_training_saves_and_says_so(tmp_path: Path, tiny_llama_dir):
    proc = quickstart(tmp_path, STROP_FAULT_AFTER_STEP="1")  # the loop sends itself SIGTERM
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "strop: interrupted at step 1; checkpoint saved, rerun to resume"
    )
    assert "[3/4]" in out and "[4/4]" not in out


def test_ctrl_c_outside_training_is_one_sentence(tmp_path: Path, tiny_llama_dir):
    proc = quickstart(tmp_path)
    for line in proc.stdout:
        if line.startswith("[2/4]"):  # scoring the base model (or, if quick, training)
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("strop: interrupted"), last
    assert last in (
        "strop: interrupted (SIGINT) while scoring the base model, before training; "
        "rerun to start again",
        "strop: interrupted (SIGINT) while training; rerun to start again",
    ) or last.startswith("strop: interrupted at step")
