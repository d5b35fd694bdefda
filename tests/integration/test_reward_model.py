"""stage rm: a value head trained with Bradley-Terry; the saved model (full or adapter) scores
conversations exactly as the trained one did, and held-out pairwise accuracy is reported."""

from __future__ import annotations

import json

import pytest

from strop.config import load_config
from strop.data.validate import load_records
from strop.reward import load_reward_model, score
from strop.train.loop import train
from tests.helpers import check_golden, tiny_config, write_preference_jsonl


def _run(tmp_path, method, **train_opts):
    data = write_preference_jsonl(tmp_path / "pairs.jsonl", n=40, seed=2)
    raw = tiny_config(
        tmp_path / "run",
        data,
        stage="rm",
        method=method,
        data={"eval": 0.2},
        rm={"center_weight": 0.01},
        train={"max_steps": 12, "batch_size": 4, "lr": 3e-3, "seed": 1, **train_opts},
    )
    return train(load_config(None, raw=raw)), data


def _pairs(data, k=6):
    recs = load_records(data, kind="preference").records[:k]

    def conv(rec, side):
        return [{"role": m.role, "content": m.content} for m in [*rec.messages, *side]]

    return [conv(r, r.chosen) for r in recs], [conv(r, r.rejected) for r in recs]


@pytest.mark.parametrize(
    "method",
    [
        {"name": "full"},
        {"name": "lora", "r": 4, "alpha": 8},
        {"name": "freeze", "trainable_layers": [1]},
    ],
)
def test_reward_model_learns_and_the_saved_model_scores_like_the_trained_one(tmp_path, method):
    res, data = _run(tmp_path, method)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    metrics = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    final_eval = [m for m in metrics if "eval_accuracy" in m][-1]
    assert final_eval["eval_accuracy"] >= 0.75  # 'alpha...' beats 'zulu...' on held-out pairs
    model, tok = load_reward_model(res.final_dir, "fp32")
    chosen, rejected = _pairs(data)
    r_c, r_r = score(model, tok, chosen), score(model, tok, rejected)
    assert sum(c > r for c, r in zip(r_c, r_r, strict=True)) >= 5
    # one conversation alone scores the same as inside a batch (per-document attention)
    assert score(model, tok, chosen[:1])[0] == pytest.approx(r_c[0], abs=1e-5)


def test_rm_golden_trajectory(tmp_path):
    res, _ = _run(tmp_path, {"name": "full"}, grad_accum=2, batch_size=2, warmup=2)
    got = [
        {k: h[k] for k in ("step", "loss", "grad_norm", "tokens", "accuracy")} for h in res.history
    ]
    check_golden("rm-full", got, ("loss", "grad_norm", "accuracy"))


def test_a_causal_lm_is_not_a_reward_model(tiny_llama_dir):
    from strop.errors import StropError

    with pytest.raises(StropError, match="not a reward model"):
        load_reward_model(tiny_llama_dir)
