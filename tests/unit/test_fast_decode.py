"""The lean decode step (strop.models.fast_decode) computes transformers' decode step: the
same logits for Llama and Qwen2 (q/k/v biases), full and LoRA, fp32 and bf16 autocast, and
rollouts through it equal rollouts through transformers' forward. Models it cannot reproduce
get no plan."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch

import strop.rollout as rollout
from strop.models.fast_decode import decode_plan, reserved_cache
from tests.helpers import eval_model

LORA = {"name": "lora", "r": 4, "alpha": 8}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("method", [None, LORA], ids=["full", "lora"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_decode_step_logits_equal_transformers(name, method, bf16):
    model, _ = eval_model(name, method, bf16)
    b, width, cap = 5, 7, 12
    torch.manual_seed(1)
    ids = torch.randint(3, 200, (b, width))
    mask = torch.ones(b, width, dtype=torch.long)
    mask[0, :3] = mask[3, :1] = 0  # left padding, as the rollout lays prompts out
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    new = torch.randint(3, 200, (b,))
    new_pos, new_mask = pos[:, -1] + 1, torch.cat([mask, mask.new_ones(b, 1)], 1)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    logits = []
    with torch.no_grad(), cast:
        for fast in (False, True):
            cache = reserved_cache(model, cap)
            model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
            plan = decode_plan(model, cache, torch.bfloat16 if bf16 else torch.float32)
            assert plan is not None
            if fast:
                logits.append(plan.step(new, new_pos, new_mask, cache))
            else:
                out = model(
                    input_ids=new[:, None],
                    attention_mask=new_mask,
                    position_ids=new_pos[:, None],
                    past_key_values=cache,
                )
                logits.append(out.logits[:, -1].float())
    want, got = logits
    scale = float(want.abs().max())
    # fp32: round-off of the fused matmuls (measured 1.6e-7 of the scale); bf16: at most one
    # rounding of a bf16 logit (measured: bitwise equal)
    tol = 5e-3 * scale if bf16 else 1e-5 * scale
    torch.testing.assert_close(got, want, atol=tol, rtol=0)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_rollouts_through_the_plan_equal_rollouts_through_transformers(bf16, monkeypatch):
    model, tok = eval_model("tiny-llama", LORA, bf16)
    prompts = [tok(t)["input_ids"] for t in ("alpha beta", "one two three four five", "red")]
    args = (prompts, 3, 10, [tok.eos_token_id], tok.pad_token_id, 1.0, 1.0, 4)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with cast:
        fast = rollout.sample(model, *args)
        monkeypatch.setattr(rollout, "decode_plan", lambda *a: None)
        slow = rollout.sample(model, *args)
    assert fast.stats["fast_decode"] and not slow.stats["fast_decode"]
    assert fast.completion_ids == slow.completion_ids
    for a, b in zip(fast.logps, slow.logps, strict=True):
        torch.testing.assert_close(
            torch.tensor(a), torch.tensor(b), atol=1e-2 if bf16 else 1e-5, rtol=0
        )


@pytest.mark.parametrize(
    "variant",
    ["dora", "ia3", "hook", "prompt", "head-hook"],
)
def test_models_the_step_cannot_reproduce_get_no_plan(variant):
    methods = {
        "dora": {"name": "dora", "r": 4},
        "ia3": {"name": "ia3"},
        "prompt": {"name": "prompt", "virtual_tokens": 4},
    }
    model, _ = eval_model("tiny-llama", methods.get(variant), False)
    if variant == "hook":
        model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: o * 2)
    if variant == "head-hook":
        model = copy.deepcopy(model)
        model.lm_head.register_forward_pre_hook(lambda m, i: i)
    assert decode_plan(model, reserved_cache(model, 8), torch.float32) is None
