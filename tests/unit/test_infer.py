"""Mechanics of batched generation on the tiny random models (their text is noise by design)."""

from __future__ import annotations

import pytest
import torch

from strop.errors import StropError
from strop.infer import (
    GenerationParams,
    _cut,
    _truncate_at_stops,
    generate,
    render_prompt,
    stop_token_ids,
)
from strop.models.load import load_model

PROMPTS = [
    "hi",
    "a much longer prompt, so that the batch needs plenty of left padding",
    [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y"},
        {"role": "user", "content": "zz"},
    ],
    "medium length prompt",
    "?",
]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def loaded(request, tiny_llama_dir, tiny_qwen2_dir):
    model_dir = tiny_llama_dir if request.param == "llama" else tiny_qwen2_dir
    model, tok, _ = load_model(str(model_dir))
    return model, tok


def test_render_prompt_wraps_a_string_as_a_user_turn(loaded):
    _, tok = loaded
    text = render_prompt(tok, "hello there", system="be brief")
    assert "hello there" in text and "be brief" in text
    assert text.index("be brief") < text.index("hello there")
    messages = [{"role": "user", "content": "hello there"}]
    assert render_prompt(tok, "hello there") == render_prompt(tok, messages)
    # The generation prompt (assistant header) is appended so the model answers next.
    assert text.rstrip().endswith(("<|end_header_id|>", "<|im_start|>assistant"))


def test_batched_greedy_equals_one_by_one(loaded):
    model, tok = loaded
    params = GenerationParams(max_new_tokens=12, batch_size=len(PROMPTS))
    batched = generate(model, tok, PROMPTS, params)
    single = [generate(model, tok, [p], params)[0] for p in PROMPTS]
    assert batched == single
    assert any(batched), "the tiny model should produce some visible text"


def test_batch_size_does_not_change_greedy_output_or_order(loaded):
    model, tok = loaded
    a = generate(model, tok, PROMPTS, GenerationParams(max_new_tokens=8, batch_size=2))
    b = generate(model, tok, PROMPTS, GenerationParams(max_new_tokens=8, batch_size=5))
    assert a == b


def test_greedy_is_deterministic_and_sampling_is_seeded(loaded):
    model, tok = loaded
    greedy = GenerationParams(max_new_tokens=10)
    assert generate(model, tok, PROMPTS, greedy) == generate(model, tok, PROMPTS, greedy)

    def sample(seed: int) -> list[str]:
        params = GenerationParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=seed)
        return generate(model, tok, PROMPTS, params)

    torch.manual_seed(123)
    first = sample(1)
    torch.manual_seed(456)  # the caller's global RNG state must not matter
    assert sample(1) == first
    assert sample(2) != first


def test_stop_string_truncates_before_it(loaded):
    model, tok = loaded
    free = generate(model, tok, PROMPTS, GenerationParams(max_new_tokens=20))
    # Pick a stop string from the middle of some output, avoiding U+FFFD from split bytes.
    row, start = next(
        (i, k)
        for i, text in enumerate(free)
        for k in range(1, len(text) - 1)
        if "\ufffd" not in text[k : k + 2]
    )
    stop = free[row][start : start + 2]
    cut = generate(model, tok, PROMPTS, GenerationParams(max_new_tokens=20, stop=[stop]))
    for full, short in zip(free, cut, strict=True):
        expected = full[: full.find(stop)] if stop in full else full
        assert short == expected
        assert stop not in short


def test_state_is_restored(loaded):
    model, tok = loaded
    tok.padding_side = "right"
    model.train()
    generate(model, tok, ["hi"], GenerationParams(max_new_tokens=2))
    assert tok.padding_side == "right" and model.training
    model.eval()


def _greedy_ids(model, tok, prompt, n: int) -> list[int]:
    """n greedy tokens by a plain loop of full forwards: a reference independent of the
    engine and of transformers' generate."""
    ids = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def test_stats_count_new_tokens_exactly(loaded):
    """new_tokens counts every generated token up to and including the one that ends a reply:
    one row is made to stop early by declaring its third greedy token an end-of-reply id."""
    model, tok = loaded
    prompts, n = PROMPTS[:3], 6
    early = _greedy_ids(model, tok, prompts[0], n)[2]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = early
    try:
        stops = set(stop_token_ids(model, tok)) | {tok.pad_token_id}
        assert early in stops
        want = 0
        for p in prompts:
            row = _greedy_ids(model, tok, p, n)
            want += next((i + 1 for i, t in enumerate(row) if t in stops), n)
        stats: dict = {}
        generate(model, tok, prompts, GenerationParams(max_new_tokens=n, batch_size=3), stats=stats)
    finally:
        model.generation_config.eos_token_id = saved
    assert want <= 2 * n + 3  # the first row stopped at its third token
    assert stats["new_tokens"] == want


def test_bad_params_are_user_errors(loaded):
    model, tok = loaded
    with pytest.raises(StropError, match="top_p"):
        generate(model, tok, ["hi"], GenerationParams(top_p=0.0))
    with pytest.raises(StropError, match="max_new_tokens"):
        generate(model, tok, ["hi"], GenerationParams(max_new_tokens=0))
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(StropError, match="temperature must be a finite number"):
            generate(model, tok, ["hi"], GenerationParams(temperature=bad))


def test_cut_and_truncate_helpers():
    assert _cut([5, 6, 9, 7], {9}) == ([5, 6], 3)
    assert _cut([5, 6], {9}) == ([5, 6], 2)
    assert _truncate_at_stops("abc END x STOP", ["STOP", "END"]) == "abc "
    assert _truncate_at_stops("abc", ["zz", ""]) == "abc"


def test_lora_adapter_saved_and_reloaded_generates_the_same(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    params = GenerationParams(max_new_tokens=12)
    base, tok, _ = load_model(str(tiny_llama_dir))
    base_out = generate(base, tok, PROMPTS, params)

    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    in_memory = generate(peft_model, tok, PROMPTS, params)
    assert in_memory != base_out, "a non-zero LoRA init should change the greedy output"

    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded, tok2, _ = load_model(str(tiny_llama_dir), adapter=str(tmp_path / "adapter"))
    assert generate(reloaded, tok2, PROMPTS, params) == in_memory
