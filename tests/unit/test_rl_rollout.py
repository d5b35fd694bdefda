"""Rollout engine: sampled log-probs equal a fresh recomputation (fp32, tight), greedy
completions equal transformers' generate, seeds reproduce, groups share their prompt."""

from __future__ import annotations

import pytest
import torch

from strop.data.batching import Row, collate
from strop.data.render import IGNORE
from strop.models.load import load_model
from strop.models.logps import target_logps
from strop.rollout import sample, sample_tokens


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


def test_weights_cast_once_under_autocast_is_bitwise_what_autocast_computes(tiny, monkeypatch):
    """bf16 autocast with a frozen fp32 LM head tied to the embeddings (SmolLM2's layout): the
    rollout's once-per-rollout casts give the very tokens and log-probs of per-call casts, and
    every weight (the tie included) is the same Parameter object afterwards."""
    import copy
    from contextlib import nullcontext

    import strop.rollout as rollout

    cast_once = rollout.weights_cast_once
    model, tok, prompts = tiny
    model = copy.deepcopy(model)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied
    model.requires_grad_(False)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)  # trainable ones too
    before = {n: p for n, p in model.named_parameters()}
    args = (prompts, 3, 10, [tok.eos_token_id], tok.pad_token_id, 1.0, 1.0, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = sample(model, *args)
        monkeypatch.setattr(rollout, "weights_cast_once", lambda m, d: nullcontext())
        slow = sample(model, *args)
    assert fast.completion_ids == slow.completion_ids
    assert fast.logps == slow.logps  # bitwise
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(p is before[n] and p.dtype == torch.float32 for n, p in model.named_parameters())
    # outside autocast nothing is swapped
    with cast_once(model, "cpu"):
        assert model.lm_head.weight is before["model.embed_tokens.weight"]
    with torch.autocast("cpu", dtype=torch.bfloat16), cast_once(model, "cpu"):
        assert model.lm_head.weight.dtype == torch.bfloat16
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert not model.model.layers[0].mlp.up_proj.weight.requires_grad


def test_weights_cast_once_with_fused_lora_adapters(tiny, monkeypatch):
    """A bf16 LoRA run's sampler (strop's fused LoRA forward, bf16 frozen linears, fp32 adapters
    with a nonzero B) samples bitwise the same with adapters cast once per rollout."""
    import copy
    from contextlib import nullcontext

    import strop.rollout as rollout
    from strop.models.load import frozen_linears_to
    from strop.models.transforms import parse_method

    model, tok, prompts = tiny
    transform, params = parse_method({"name": "lora", "r": 4, "alpha": 8})
    model = transform.apply(copy.deepcopy(model), params)
    frozen_linears_to(model, torch.bfloat16)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    args = (prompts, 3, 10, [tok.eos_token_id], tok.pad_token_id, 1.0, 1.0, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = sample(model, *args)
        monkeypatch.setattr(rollout, "weights_cast_once", lambda m, d: nullcontext())
        slow = sample(model, *args)
    assert fast.completion_ids == slow.completion_ids and fast.logps == slow.logps
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sample_tokens_draws_from_the_tempered_distribution(top_p):
    """Empirical frequencies of 40,000 draws match softmax(logits / T) (renormalised over the
    nucleus) within 5 standard errors; a token of probability ~0 is never drawn."""
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05 - 1e-30, 1e-30], dtype=torch.float64)
    logits = (probs.log() * 0.7).float()  # T = 0.7 turns these back into probs
    n = 40_000
    g = torch.Generator().manual_seed(3)
    tokens, lp = sample_tokens(logits.repeat(n, 1), 0.7, top_p, g)
    want = probs.clone()
    if top_p < 1:
        want[4:] = 0  # 0.4 + 0.25 + 0.2 = 0.85 < 0.9 <= 0.95: the nucleus is the first four
    want /= want.sum()
    freq = torch.bincount(tokens, minlength=6).double() / n
    se = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() <= 5 * se + 1e-12).all(), (freq, want)
    assert freq[5] == 0
    torch.testing.assert_close(lp, (logits / 0.7).log_softmax(-1)[tokens])
