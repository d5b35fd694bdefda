"""`judge` on tiny models: the swap-and-tie rule, verdicts recomputed with a plain one-forward
log-likelihood, identical answers always tie, rates with bootstrap CIs."""

from __future__ import annotations

import json

import pytest
import torch

from strop.errors import StropError
from strop.eval.config import load_eval_config
from strop.eval.judge import JUDGE_PROMPT, combine, pick
from strop.eval.runner import run_eval
from tests.helpers import write_chat_jsonl


@pytest.mark.parametrize(
    ("first", "second", "want"),
    [
        ("B", "A", "win"),  # candidate preferred as B and again as A
        ("A", "B", "loss"),  # baseline preferred in both orders
        ("A", "A", "tie"),  # the judge always says A: position bias, cancelled
        ("B", "B", "tie"),
        (None, "A", "tie"),  # exactly equal log-likelihoods in one order
    ],
)
def test_swap_rule(first, second, want):
    assert combine(first, second) == want


def test_pick():
    assert pick(-1.0, -2.0) == "A" and pick(-3.0, -2.0) == "B" and pick(-2.0, -2.0) is None


def _ll(model, tok, context, cont):
    ctx = tok(context)["input_ids"]
    whole = tok(context + cont)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
    return sum(float(logp[j - 1, whole[j]]) for j in range(len(ctx), len(whole)))


def test_judge_end_to_end(tmp_path, tiny_llama_dir, tiny_qwen2_dir):
    from strop.models.load import load_model

    data = write_chat_jsonl(tmp_path / "c.jsonl", n=6, seed=4)
    raw = {
        "models": {"base": "tiny-llama", "same": "tiny-llama", "other": "tiny-qwen2"},
        "output_dir": str(tmp_path / "out"),
        "bootstrap": 100,
        "tasks": [
            {
                "name": "j",
                "type": "judge",
                "data": str(data),
                "judge": "tiny-llama",
                "max_new_tokens": 6,
                "batch_size": 8,
            },
        ],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())["tasks"]["j"]
    # identical answers: both orders see the same prompt, so the same letter wins -> all ties
    assert res["results"]["same"]["tie_rate"]["value"] == 1.0
    assert res["results"]["base"]["tie_rate"]["value"] == 1.0  # the baseline vs itself

    def preds(name):
        text = (out / "predictions" / f"j.{name}.jsonl").read_text()
        return [json.loads(x) for x in text.splitlines()]

    base, other = preds("base"), preds("other")
    judge, tok, _ = load_model("tiny-llama", "fp32")
    judge.eval()
    results = []
    for b, o in zip(base, other, strict=True):
        q = "\n".join(f"{m['role']}: {m['content']}" for m in b["prompt"])
        verdicts = []
        for a_text, b_text in (
            (b["prediction"], o["prediction"]),
            (o["prediction"], b["prediction"]),
        ):
            prompt = JUDGE_PROMPT.format(question=q, a=a_text, b=b_text)
            verdicts.append(pick(_ll(judge, tok, prompt, " A"), _ll(judge, tok, prompt, " B")))
        assert [o["judge"]["first"], o["judge"]["second"]] == verdicts
        results.append(combine(*verdicts))
    got = res["results"]["other"]
    for key in ("win", "tie", "loss"):
        assert got[f"{key}_rate"]["scores"] == [float(r == key) for r in results]
        d = res["deltas"]["other"][f"{key}_rate"]
        base_rate = 1.0 if key == "tie" else 0.0  # the baseline column ties with itself
        assert d["delta"] == pytest.approx(got[f"{key}_rate"]["value"] - base_rate)
    assert res["settings"]["judge"] == "tiny-llama"


def test_judge_config_errors(tmp_path):
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=2)
    task = {"name": "j", "type": "judge", "data": str(data)}
    raw = {"models": {"a": "tiny-llama", "b": "tiny-llama"}, "tasks": [task]}
    with pytest.raises(StropError, match="judge: name the judge model"):
        load_eval_config(None, [], raw=raw)
    task["judge"] = "tiny-llama"
    raw["models"] = {"a": "tiny-llama"}
    with pytest.raises(StropError, match="name at least two models"):
        load_eval_config(None, [], raw=raw)
    raw["models"] = {"a": "tiny-llama", "b": "tiny-llama"}
    task["judge_adapter"] = "nope"
    with pytest.raises(StropError, match="tasks.0.judge_adapter: not a directory"):
        load_eval_config(None, [], raw=raw)
