"""Loop policies: non-finite steps, gradient checkpointing, pt on raw text, the real model."""

from __future__ import annotations

import json

import pytest

from strop.config import load_config
from strop.data.dataset import build_datasets
from strop.errors import StropRuntimeError
from strop.hub import resolve_model
from strop.models.load import load_tokenizer
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl


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
    """Documents longer than max_length become consecutive pieces that together hold every
    token of the document (BOS and EOS included); every token of a piece but its first is a
    target; one epoch trains exactly those targets."""
    words = [
        "the",
        "river",
        "runs",
        "past",
        "old",
        "mills",
        "and",
        "quiet",
        "farms",
        "toward",
        "a",
        "grey",
        "sea",
    ]
    texts = [
        " ".join(words[(i + k) % len(words)] for k in range(n))
        for i, n in enumerate((4, 30, 75, 120, 9, 160))
    ]
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    raw = tiny_config(
        tmp_path / "run",
        path,
        stage="pt",
        data={"max_length": 32, "packing": True},
        train={"max_steps": None, "epochs": 1, "batch_size": 1},
    )
    cfg = load_config(None, raw=raw)
    tok = load_tokenizer(resolve_model(cfg.model.name))
    rows = build_datasets(cfg.data, cfg.stage, tok, cfg.train.seed).train.rows
    pieces = []
    for row in rows:
        assert row.labels == row.input_ids  # every token of raw text is trained on
        starts = [sum(row.doc_lens[:k]) for k in range(len(row.doc_lens))]
        pieces += [
            tuple(row.input_ids[s : s + n]) for s, n in zip(starts, row.doc_lens, strict=True)
        ]
    want = []
    for t in texts:
        ids = tok(t, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
        want += [tuple(ids[i : i + 32]) for i in range(0, len(ids), 32)]
    assert sorted(pieces) == sorted(p for p in want if len(p) > 1)
    assert max(len(tok(t)["input_ids"]) for t in texts) > 3 * 32  # some document was split 3+ ways
    run = train(cfg)
    assert len(run.history) == len(rows)  # batch 1, one epoch: one packed row per step
    assert run.history[-1]["tokens"] == sum(len(p) - 1 for p in pieces)
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
