"""Rollout engine: sampled log-probs equal a fresh recomputation (fp32, tight), greedy
completions equal transformers' generate, seeds reproduce, groups share their prompt."""

from __future__ import annotations

import pytest
import torch

from strop.data.batching import Row, collate
from strop.data.render import IGNORE
from strop.models.load import load_model
from strop.train.objectives.sequence import target_logps
from strop.train.rollout import sample, sample_tokens


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tok, _ = load_model("tiny-llama", "fp32")
    model.train()  # as in training: sample() must put it back
    prompts = [tok(t)["input_ids"] for t in ("alpha beta", "one two three four five", "red")]
    return model, tok, prompts


def _recompute(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    t = temperature or 1.0
    return (logits / t).log_softmax(-1).gather(1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampled_logps_equal_recomputed_logps(tiny, temperature, top_p):
    model, tok, prompts = tiny
    r = sample(model, prompts, 4, 12, [tok.eos_token_id], tok.pad_token_id, temperature, top_p, 7)
    assert len(r.completion_ids) == 12 and r.prompt_ids[4] == prompts[1]
    assert model.training  # restored
    for p, c, lp in zip(r.prompt_ids, r.completion_ids, r.logps, strict=True):
        want = _recompute(model, p, c, temperature)
        torch.testing.assert_close(torch.tensor(lp), want, atol=2e-5, rtol=0)
    # and through the training path: packed rows, chunked log-probs through the LM head
    rows = [
        Row(p + c, [IGNORE] * len(p) + c, [len(p) + len(c)], {"x": 0.0})
        for p, c in zip(r.prompt_ids, r.completion_ids, strict=True)
    ]
    batch = collate(rows, tok.pad_token_id, True, with_docs=True)
    if temperature in (0.0, 1.0):
        with torch.no_grad():
            got, _ = target_logps(model, batch, 16)
        flat = torch.tensor([x for lp in r.logps for x in lp])
        torch.testing.assert_close(got, flat, atol=2e-5, rtol=0)


def test_greedy_equals_transformers_generate_and_seeds_reproduce(tiny):
    model, tok, prompts = tiny
    stop = [tok.eos_token_id]
    r = sample(model, prompts, 2, 10, stop, tok.pad_token_id, temperature=0.0)
    model.eval()
    for i, p in enumerate(prompts):
        out = model.generate(
            input_ids=torch.tensor([p]),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tok.pad_token_id,
        )[0, len(p) :].tolist()
        want = out[: out.index(stop[0]) + 1] if stop[0] in out else out
        assert r.completion_ids[2 * i] == r.completion_ids[2 * i + 1] == want
    model.train()
    a = sample(model, prompts, 3, 10, stop, tok.pad_token_id, 1.0, 1.0, seed=5)
    b = sample(model, prompts, 3, 10, stop, tok.pad_token_id, 1.0, 1.0, seed=5)
    c = sample(model, prompts, 3, 10, stop, tok.pad_token_id, 1.0, 1.0, seed=6)
    assert a.completion_ids == b.completion_ids and a.logps == b.logps
    assert a.completion_ids != c.completion_ids


def test_stop_tokens_end_completions_and_leave_the_batch(tiny):
    model, tok, prompts = tiny
    # every token a stop token: each completion is exactly one token long
    everything = list(range(model.config.vocab_size))
    r = sample(model, prompts, 2, 8, everything, tok.pad_token_id, 1.0, 1.0, 0)
    assert all(len(c) == 1 for c in r.completion_ids) and all(r.finished)
    assert r.stats["decode_steps"] == 1


def test_top_p_draws_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    tok, lp = sample_tokens(logits, 1.0, 0.75, g)
    assert set(tok.tolist()) == {0, 1}  # 0.5 + 0.3 covers 0.75
    torch.testing.assert_close(lp, logits.log_softmax(-1).gather(1, tok[:, None])[:, 0])
