"""`reward` eval task on tiny models: reward-model columns judged on pairs, and policy columns
whose answers one reward model scores; every number recomputed with strop.reward.score."""

from __future__ import annotations

import json

import pytest
import torch

from strop.data.validate import load_records
from strop.errors import StropError
from strop.eval.config import load_eval_config
from strop.eval.runner import run_eval
from strop.reward import load_reward_model, score
from tests.helpers import write_preference_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_dir):
    """Two stage-rm-shaped output dirs (tiny-llama under a seeded value head) and pairs."""
    from strop.models.load import load_model

    tmp = tmp_path_factory.mktemp("reward")
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, tok, _ = load_model("tiny-llama", "fp32", head="reward")
        model.save_pretrained(tmp / f"rm{seed}")
        tok.save_pretrained(tmp / f"rm{seed}")
        dirs.append(str(tmp / f"rm{seed}"))
    pairs = write_preference_jsonl(tmp / "pairs.jsonl", n=6, seed=3)
    return tmp, dirs, pairs


def _conv(msgs):
    return [{"role": m.role, "content": m.content} for m in msgs]


def _direct_pairs(rm_dir, pairs):
    model, tok = load_reward_model(rm_dir, "fp32")
    recs = load_records(pairs, kind="preference").records
    c = [score(model, tok, [_conv([*r.messages, *r.chosen])])[0] for r in recs]
    r_ = [score(model, tok, [_conv([*r.messages, *r.rejected])])[0] for r in recs]
    return model, tok, recs, c, r_


def test_reward_model_columns(setup):
    tmp, dirs, pairs = setup
    raw = {
        "models": {"rm0": {"model": dirs[0], "dtype": "fp32"}, "rm1": dirs[1]},
        "output_dir": str(tmp / "out-rm"),
        "bootstrap": 50,
        "tasks": [{"name": "rm", "type": "reward", "data": str(pairs), "batch_size": 4}],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())["tasks"]["rm"]
    for name, d in zip(("rm0", "rm1"), dirs, strict=True):
        _, _, _, c, r = _direct_pairs(d, pairs)
        got = res["results"][name]
        assert got["reward_chosen"]["scores"] == pytest.approx(c, abs=1e-4)
        assert got["reward_rejected"]["scores"] == pytest.approx(r, abs=1e-4)
        assert got["accuracy"]["scores"] == [float(a > b) for a, b in zip(c, r, strict=True)]
        assert got["margin"]["value"] == pytest.approx(sum(c) / 6 - sum(r) / 6, abs=1e-4)
    # two differently seeded heads really differ, so the delta is not trivially zero
    assert res["deltas"]["rm1"]["margin"]["delta"] != 0.0


def test_policy_columns_scored_by_one_reward_model(setup):
    tmp, dirs, pairs = setup
    raw = {
        "models": {"base": "tiny-llama", "same": "tiny-llama"},
        "output_dir": str(tmp / "out-policy"),
        "bootstrap": 50,
        "tasks": [
            {
                "name": "rw",
                "type": "reward",
                "data": str(pairs),
                "reward_model": dirs[0],
                "max_new_tokens": 5,
            },
        ],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())["tasks"]["rw"]
    model, tok, recs, c, r = _direct_pairs(dirs[0], pairs)
    preds = [
        json.loads(x) for x in (out / "predictions" / "rw.base.jsonl").read_text().splitlines()
    ]
    want = [
        score(
            model, tok, [[*_conv(rec.messages), {"role": "assistant", "content": p["prediction"]}]]
        )[0]
        for rec, p in zip(recs, preds, strict=True)
    ]
    got = res["results"]["base"]
    assert got["reward"]["scores"] == pytest.approx(want, abs=1e-4)
    assert got["win_vs_chosen"]["scores"] == [float(a > b) for a, b in zip(want, c, strict=True)]
    assert got["win_vs_rejected"]["scores"] == [float(a > b) for a, b in zip(want, r, strict=True)]
    info = res["reward_model"]["base"]
    assert info["pairwise_accuracy"] == pytest.approx(
        sum(a > b for a, b in zip(c, r, strict=True)) / 6
    )
    assert info["n"] == 6 and info["path"] == dirs[0]
    assert all(d["ci95"] == [0.0, 0.0] for d in res["deltas"]["same"].values())
    assert res["settings"]["reward_model"] == dirs[0]


def test_reward_errors(setup, tmp_path):
    _, dirs, pairs = setup
    raw = {
        "models": {"m": "tiny-llama"},
        "output_dir": str(tmp_path / "o"),
        "tasks": [{"name": "rw", "type": "reward", "data": str(pairs), "reward_model": "nope"}],
    }
    with pytest.raises(StropError, match="tasks.0.reward_model: not a directory: nope"):
        load_eval_config(None, [], raw=raw)
    raw["tasks"] = [{"name": "p", "type": "perplexity", "data": str(pairs), "reward_model": "x"}]
    with pytest.raises(StropError, match=r"unknown key 'reward_model' \(reward tasks only"):
        load_eval_config(None, [], raw=raw)
    # a causal LM column where a reward model is needed: one clear error
    raw["tasks"] = [{"name": "rw", "type": "reward", "data": str(pairs)}]
    with pytest.raises(StropError, match="not a model or adapter dir|not a reward model"):
        run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
