"""Exact resume (DESIGN.md §3.4): a real SIGTERM at a random step, then the same command,
gives bit-identical weights, optimizer state, losses and data order to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from strop.train.loop import FAULT_ENV
from tests.helpers import tiny_config, write_chat_jsonl, write_preference_jsonl


def _strop_train(cfg_path, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "strop.cli", "train", str(cfg_path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"], r["tokens"]) for r in rows if "loss" in r}


def _optimizer_state(ckpt_dir, tmp_path, tag):
    out = tmp_path / f"{tag}.pt"
    dcp_to_torch_save(ckpt_dir, out)
    return torch.load(out, weights_only=False)


def _assert_same_tree(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_kill_and_resume_is_bit_identical(tmp_path, stage):
    # dpo: the resumed run must score its reference with the *initial* policy again (precompute
    # happens before the checkpoint loads), or every later loss would differ.
    writer = write_preference_jsonl if stage == "dpo" else write_chat_jsonl
    data = writer(tmp_path / "data.jsonl", n=16)
    total = 12  # 8 steps per epoch: the run crosses an epoch boundary (new shuffle)
    kill_at = random.Random().randint(2, total - 2)
    configs = {}
    for name in ("straight", "killed"):
        raw = tiny_config(
            tmp_path / name,
            data,
            stage=stage,
            method={"name": "lora", "r": 4, "dropout": 0.1},  # dropout: RNG state matters
            train={
                "max_steps": total,
                "batch_size": 2,
                "save_every": 1,
                "keep_last": 2,
                "warmup": 2,
            },
        )
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(raw))
    straight = _strop_train(configs["straight"])
    assert straight.returncode == 0, straight.stderr
    killed = _strop_train(configs["killed"], {FAULT_ENV: str(kill_at)})
    assert killed.returncode == 128 + 15, killed.stderr  # exited on SIGTERM, after saving
    assert "interrupted" in killed.stderr
    assert not (tmp_path / "killed" / "final").exists()
    resumed = _strop_train(configs["killed"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout

    a, b = tmp_path / "straight", tmp_path / "killed"
    assert _losses(a) == _losses(b)  # exact floats: same data order, dropout masks, lr
    wa = load_file(a / "final" / "adapter_model.safetensors")
    wb = load_file(b / "final" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    last = f"checkpoints/step-{total}"
    _assert_same_tree(
        _optimizer_state(a / last, tmp_path, "a"), _optimizer_state(b / last, tmp_path, "b")
    )
    ta = json.loads((a / last / "trainer.json").read_text())
    tb = json.loads((b / last / "trainer.json").read_text())
    assert ta == tb
