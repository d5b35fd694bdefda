"""The run directory contract (DESIGN.md §1): what a finished run leaves behind."""

from __future__ import annotations

import json

import yaml

from strop.config import load_config
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl


def test_run_dir_layout_and_contents(tmp_path):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=30)
    with open(data, "a") as f:
        f.write('{"messages": [{"role": "robot", "content": "x"}]}\n')  # one bad row
    raw = tiny_config(
        tmp_path / "run",
        data,
        method={"name": "lora", "r": 4},
        data={"eval": 0.2, "max_bad_fraction": 0.05},
        train={
            "max_steps": 4,
            "save_every": 2,
            "keep_last": 1,
            "eval_every": 2,
            "tensorboard": True,
        },
    )
    cfg = load_config(None, raw=raw)
    train(cfg)
    run = tmp_path / "run"
    # config.yaml is the resolved config: it loads back to the same thing.
    assert load_config(None, raw=yaml.safe_load((run / "config.yaml").read_text())) == cfg
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"step", "loss", "lr", "grad_norm", "tokens", "target_tokens_per_s"} <= steps[0].keys()
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    # keep_last=1: only the newest committed checkpoint survives, no temp dirs.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4"]
    assert (run / "checkpoints" / "step-4" / "COMMITTED").exists()
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in (run / "final").iterdir()
    }
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run / "report.md").read_text()
    assert "eval_loss" in report and "![loss](loss.png)" in report
    assert any((run / "tensorboard").iterdir())
    quarantine = [json.loads(x) for x in (run / "quarantine-train.jsonl").read_text().splitlines()]
    assert len(quarantine) == 1 and quarantine[0]["origin"].endswith("chat.jsonl:31")
    assert "robot" in quarantine[0]["problem"]
