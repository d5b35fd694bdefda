"""Loop policies: non-finite steps, gradient checkpointing, pt on raw text, the real model."""

from __future__ import annotations

import pytest

from strop.config import load_config
from strop.errors import StropRuntimeError
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl, write_text_jsonl


def _cfg(tmp_path, **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=24)
    return load_config(None, raw=tiny_config(tmp_path / "run", data, **sections))


# An absurd lr blows the weights up after the first update; later losses are NaN/inf.
BLOW_UP = {"lr": 1e30, "max_grad_norm": None, "max_steps": 8, "warmup": 0, "schedule": "constant"}


def test_nonfinite_steps_are_skipped_counted_then_stop(tmp_path):
    cfg = _cfg(tmp_path, train={**BLOW_UP, "max_nan_skips": 2})
    with pytest.raises(StropRuntimeError, match=r"3 non-finite steps \(last at step \d+\)"):
        train(cfg)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert '"nan_skips": 2' in lines[-1]


def test_nonfinite_stop_policy_names_the_step(tmp_path):
    cfg = _cfg(tmp_path, train={**BLOW_UP, "nan_policy": "stop"})
    with pytest.raises(StropRuntimeError, match=r"non-finite .* at step \d+; stopping"):
        train(cfg)


def test_gradient_checkpointing_gives_the_same_trajectory(tmp_path):
    runs = [
        train(
            _cfg(
                tmp_path / str(gc),
                train={"gradient_checkpointing": gc, "max_steps": 3},
                method={"name": "lora", "r": 4, "init": "gaussian"},
            )
        )
        for gc in (False, True)
    ]
    for a, b in zip(runs[0].history, runs[1].history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_pt_splits_long_documents_and_trains_every_token(tmp_path):
    data = write_text_jsonl(tmp_path / "text.jsonl", n=12)
    raw = tiny_config(tmp_path / "run", data, stage="pt", data={"max_length": 64, "packing": True})
    run = train(load_config(None, raw=raw))
    assert run.history[-1]["loss"] < run.history[0]["loss"]
    assert (run.final_dir / "model.safetensors").exists()


@pytest.mark.slow
def test_real_smollm2_lora_sft_few_steps(tmp_path, smollm2_dir):
    """The embedded model trains: loss falls over a few LoRA steps on the events data."""
    raw = tiny_config(
        tmp_path / "run",
        "examples/events/train.jsonl",
        model={"name": "smollm2-135m-instruct"},
        method={"name": "lora", "r": 8, "alpha": 16},
        data={"max_length": 512, "packing": True},
        train={"max_steps": 4, "batch_size": 1, "lr": 1e-3, "precision": "bf16"},
    )
    run = train(load_config(None, raw=raw))
    losses = [h["loss"] for h in run.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert (run.final_dir / "adapter_model.safetensors").exists()
