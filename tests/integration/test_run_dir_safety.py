"""One writer per run dir; a resume continues the same run or refuses; a diverged run fails
(issue 18, items 5, 6, 7, 10). Concurrency is tested with real `strop train` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from strop.config import load_config
from strop.errors import StropError, StropRuntimeError
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl

ROOT = Path(__file__).parents[2]


def _raw(tmp_path, **sections):
    data = tmp_path / "chat.jsonl"
    if not data.exists():
        write_chat_jsonl(data, n=24)
    train_opts = {"max_steps": 4, "save_every": 2, **sections.pop("train", {})}
    method = sections.pop("method", {"name": "lora", "r": 4})
    return tiny_config(tmp_path / "run", data, train=train_opts, method=method, **sections)


def _strop_train(cfg_path: Path, *overrides: str, log: Path | None = None) -> subprocess.Popen:
    """A real `strop train`; with ``log``, its output goes to a file (a long run would fill
    a pipe nobody reads)."""
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "strop.cli", "train", str(cfg_path), *overrides],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, pattern: str = "", timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not (any(path.glob(pattern)) if pattern else path.exists()):
        assert time.monotonic() < end, f"{path}/{pattern} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_output_dir_that_is_not_a_directory_is_one_sentence(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    raw = _raw(tmp_path, train={"output_dir": str(out)})
    with pytest.raises(
        StropError, match="train.output_dir: .*(is an existing file|because .* is a file)"
    ):
        train(load_config(None, raw=raw))


@pytest.mark.parametrize("path", ["", "."])
def test_an_empty_or_current_output_dir_is_refused(tmp_path, path):
    """'' would write the run into the current directory, where resume: never would move
    everything aside."""
    with pytest.raises(StropError, match="train.output_dir: empty"):
        train(load_config(None, [f"train.output_dir='{path}'"], raw=_raw(tmp_path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_one_sentence(tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    with pytest.raises(StropError, match="cannot write to .*Permission denied"):
        train(load_config(None, raw=_raw(tmp_path, train={"output_dir": str(out)})))


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_frees_the_dir(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    raw = _raw(tmp_path, train={"max_steps": 5000, "save_every": 5, "batch_size": 1})
    cfg.write_text(yaml.safe_dump(raw))
    first = _strop_train(cfg, log=tmp_path / "first.log")
    try:
        _wait_for(tmp_path / "run" / "metrics.jsonl")  # the first run is training
        second = _strop_train(cfg)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"is in use by another strop run (PID {first.pid})" in err
        assert "Traceback" not in err
        _wait_for(tmp_path / "run" / "checkpoints", "step-*/COMMITTED")
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    saved = max(
        int(p.parent.name.split("-")[1])
        for p in (tmp_path / "run" / "checkpoints").glob("step-*/COMMITTED")
    )
    third = _strop_train(cfg, f"train.max_steps={saved + 2}")
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert "resumed from" in out and f"done: {saved + 2} steps" in out
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps[-1] == saved + 2


def test_resume_refuses_a_changed_model_or_data_and_keeps_the_old_files(tmp_path):
    first = train(load_config(None, raw=_raw(tmp_path)))
    assert first.steps == 4
    run = tmp_path / "run"
    config_before = (run / "config.yaml").read_bytes()
    metrics_before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(StropError, match=r"method.r \(4 -> 8\).*resuming would mix two runs"):
        train(load_config(None, ["method.r=8"], raw=_raw(tmp_path)))
    assert (run / "config.yaml").read_bytes() == config_before  # nothing overwritten first
    assert (run / "metrics.jsonl").read_bytes() == metrics_before
    data = tmp_path / "chat.jsonl"
    data.write_text(data.read_text().replace("alpha", "omega", 1) or "x")
    with pytest.raises(StropError, match="data.train: .*chat.jsonl changed since"):
        train(load_config(None, raw=_raw(tmp_path)))
    assert (run / "config.yaml").read_bytes() == config_before


def test_a_harmless_change_resumes_and_resume_never_moves_the_old_run_aside(tmp_path):
    train(load_config(None, raw=_raw(tmp_path)))
    more = train(load_config(None, ["train.max_steps=6", "train.log_every=2"], raw=_raw(tmp_path)))
    assert more.steps == 6 and [h["step"] for h in more.history] == [5, 6]  # resumed at 4
    fresh = train(load_config(None, ["train.resume=never", "method.r=8"], raw=_raw(tmp_path)))
    assert [h["step"] for h in fresh.history] == [1, 2, 3, 4]
    aside = [p for p in (tmp_path / "run").iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints").is_dir()
    assert "r: 4" in (aside[0] / "config.yaml").read_text()
    assert "r: 8" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_run_that_diverges_exits_non_zero_without_final(tmp_path):
    blow_up = {
        "lr": 1e30,
        "max_grad_norm": None,
        "warmup": 0,
        "schedule": "constant",
        "save_every": 0,
        "max_nan_skips": 100,
    }
    raw = _raw(tmp_path, method={"name": "full"}, train=blow_up)
    with pytest.raises(StropRuntimeError, match="skipped as non-finite|not finite"):
        train(load_config(None, raw=raw))
    assert not (tmp_path / "run" / "final").exists()
    with pytest.raises(StropError, match="train.lr: Input should be a finite number"):
        load_config(None, ["train.lr=.inf"], raw=raw)
