"""strop.infer.generate runs on the rollout engine: greedy replies equal transformers'
generate, sampled ones are reproducible by seed, and stop strings keep the generate path."""

from __future__ import annotations

import pytest
import torch

import strop.infer as infer
from strop.infer import GenerationParams, generate
from strop.models.load import load_model

PROMPTS = ["alpha beta", [{"role": "user", "content": "one two three four five"}], "red"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_greedy_replies_equal_transformers_generate(name, monkeypatch):
    torch.manual_seed(0)
    model, tok, _ = load_model(name, "fp32")
    params = GenerationParams(max_new_tokens=12, batch_size=2)
    stats_fast, stats_slow = {}, {}
    fast = generate(model, tok, PROMPTS, params, stats=stats_fast)
    monkeypatch.setattr(infer, "_engine_serves", lambda m, p: False)
    slow = generate(model, tok, PROMPTS, params, stats=stats_slow)
    assert fast == slow and stats_fast == stats_slow
    assert any(fast)


def test_sampled_replies_reproduce_by_seed_and_stop_strings_use_generate(monkeypatch):
    torch.manual_seed(0)
    model, tok, _ = load_model("tiny-llama", "fp32")
    params = GenerationParams(max_new_tokens=12, temperature=1.0, seed=3)
    a, b = (generate(model, tok, PROMPTS, params) for _ in range(2))
    c = generate(model, tok, PROMPTS, GenerationParams(max_new_tokens=12, temperature=1.0))
    assert a == b and a != c
    assert infer._engine_serves(model, params)
    assert not infer._engine_serves(model, GenerationParams(max_new_tokens=4, stop=["\n"]))
