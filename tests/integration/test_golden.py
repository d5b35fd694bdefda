"""Golden trajectories (DESIGN.md §3.2): 12 steps of loss and grad norm on tiny models, fp32,
CPU, compared at 1e-5. A golden file changes only in a commit that says why; regenerate with
STROP_REGEN_GOLDEN=1 pytest tests/integration/test_golden.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from strop.config import load_config
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl, write_text_jsonl

GOLDEN = Path(__file__).parent.parent / "golden"
CASES = {
    "sft-full": ("sft", {"name": "full"}, True),
    "sft-lora": ("sft", {"name": "lora", "r": 4, "alpha": 8, "init": "gaussian"}, True),
    "pt-full": ("pt", {"name": "full"}, True),
    "pt-lora": ("pt", {"name": "lora", "r": 4, "alpha": 8, "init": "gaussian"}, False),
    "sft-dora": ("sft", {"name": "dora", "r": 4, "alpha": 8, "init": "gaussian"}, True),
    "sft-qlora": ("sft", {"name": "qlora", "r": 4, "alpha": 8, "init": "gaussian"}, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_trajectory(tmp_path, case):
    stage, method, packing = CASES[case]
    writer = write_chat_jsonl if stage == "sft" else write_text_jsonl
    data = writer(tmp_path / "data.jsonl", n=40, seed=7)
    raw = tiny_config(
        tmp_path / "run",
        data,
        stage=stage,
        method=method,
        data={"packing": packing, "max_length": 128},
        train={
            "max_steps": 12,
            "batch_size": 2,
            "grad_accum": 2,
            "lr": 3e-3,
            "warmup": 2,
            "weight_decay": 0.01,
            "seed": 3,
        },
    )
    history = train(load_config(None, raw=raw)).history
    got = [
        {"step": h["step"], "loss": h["loss"], "grad_norm": h["grad_norm"], "tokens": h["tokens"]}
        for h in history
    ]
    path = GOLDEN / f"{case}.json"
    if os.environ.get("STROP_REGEN_GOLDEN"):
        path.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(path.read_text())
    assert len(got) == len(want) == 12
    for g, w in zip(got, want, strict=True):
        assert g["tokens"] == w["tokens"], g["step"]
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), g["step"]
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5), g["step"]
    assert got[-1]["loss"] < got[0]["loss"]  # and it learns
