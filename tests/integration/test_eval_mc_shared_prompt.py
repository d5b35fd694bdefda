"""The shared-prompt log-likelihood scorer (each context encoded once, the choices' later tokens
on its KV cache) gives the scores of a straightforward one-forward-per-choice loop, on two
architectures, for one- and many-token continuations, interleaved contexts and any batch size;
greedy flags are right; soft-prompt adapters take the per-choice path."""

from __future__ import annotations

import random

import pytest
import torch

from strop.eval.loglik import continuation_logprobs, per_choice_logprobs


def naive(model, pairs) -> list[float]:
    """One forward of context + continuation per pair, full logits, sum the continuation's
    token log-probs."""
    out = []
    with torch.no_grad():
        for ctx, cont in pairs:
            logits = model(input_ids=torch.tensor([ctx + cont])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)
            out.append(sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont)))
    return out


def make_pairs(seed: int, vocab: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)

    def ids(lo, hi):
        return [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]

    pairs = []
    for _ in range(5):  # text-style choices: tails of 0..4 tokens after the first
        ctx = ids(2, 40)
        pairs += [(ctx, ids(1, 5)) for _ in range(4)]
    for _ in range(3):  # letter-style choices: one token each
        ctx = ids(5, 25)
        pairs += [(ctx, ids(1, 1)) for _ in range(4)]
    pairs.append((ids(1, 1), ids(3, 3)))  # a one-token context
    rng.shuffle(pairs)  # a question's choices need not be adjacent
    return pairs


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2"])
def tiny(request, tiny_llama_dir, tiny_qwen2_dir):
    from strop.models.load import load_model

    model, tok, _ = load_model(request.param, "fp32")
    return model.eval(), tok


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_shared_prompt_scores_equal_naive_loop(tiny, batch_size):
    model, tok = tiny
    pairs = make_pairs(0, model.config.vocab_size)
    got = continuation_logprobs(model, pairs, batch_size, pad_id=tok.pad_token_id or 0)
    ref = naive(model, pairs)
    assert got == pytest.approx(ref, abs=1e-5, rel=0)
    only_letters = [p for p in pairs if len(p[1]) == 1]  # the plain-padding-mask path alone
    got = continuation_logprobs(model, only_letters, batch_size)
    assert got == pytest.approx(naive(model, only_letters), abs=1e-5, rel=0)


def test_greedy_flags(tiny):
    from strop.eval.loglik import _per_choice_scores, continuation_scores

    model, _ = tiny
    ctx = list(range(10, 30))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ctx + [40]])).logits[0]
    top, top_next = int(logits[-2].argmax()), int(logits[-1].argmax())
    other = (top + 1) % model.config.vocab_size
    pairs = [(ctx, [top]), (ctx, [other]), (ctx, [40, top_next]), (ctx, [40, other]), (ctx, [])]
    want = [True, False, top == 40, False, True]
    assert [g for _, g in continuation_scores(model, pairs, 2)] == want
    assert [g for _, g in _per_choice_scores(model, pairs[:4], 2, 0)] == want[:4]


def test_each_context_is_encoded_once(tiny):
    model, _ = tiny
    pairs = make_pairs(1, model.config.vocab_size)
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(int((args[0] >= 0).sum()))
    )
    try:
        continuation_logprobs(model, pairs, batch_size=1)
        shared, seen[:] = sum(seen), []
        per_choice_logprobs(model, pairs, batch_size=1)
        per_choice = sum(seen)
    finally:
        hook.remove()
    contexts = {tuple(c): None for c, _ in pairs}
    assert per_choice == sum(len(c) + len(t) for c, t in pairs)
    assert shared == sum(map(len, contexts)) + sum(len(t) - 1 for _, t in pairs)


def test_soft_prompt_adapter_uses_per_choice_path(tiny_llama_dir):
    from peft import PromptTuningConfig, get_peft_model

    from strop.models.load import load_model

    model, _, _ = load_model("tiny-llama", "fp32")
    torch.manual_seed(0)
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    peft_model = get_peft_model(model, config).eval()
    pairs = make_pairs(2, model.config.vocab_size)[:10]
    got = continuation_logprobs(peft_model, pairs, batch_size=4)
    assert got == pytest.approx(per_choice_logprobs(peft_model, pairs, 1), abs=1e-5, rel=0)
    # the virtual tokens change the scores, so the adapter was applied
    assert got != pytest.approx(naive(model.eval(), pairs), abs=1e-3)
