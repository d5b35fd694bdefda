"""Continuous batching (strop.engine): greedy replies equal transformers' generate prompt by
prompt (rows finish at different steps, slots are reused and rows moved), LoRA folded into the
step's weights keeps them, log-probs are the model's, a sampled reply depends on its own seed
only, fp16 weights stay within their round-off, and models without a lean step keep the
static path."""

from __future__ import annotations

import pytest
import torch

import strop.infer as infer
from strop.engine import Engine, Request
from strop.errors import StropError
from strop.infer import GenerationParams, generate
from strop.models.fast_decode import fp16_weights_available, reserved_cache
from tests.helpers import eval_model

LORA = {"name": "lora", "r": 4, "alpha": 8}
LENS = [2, 30, 7, 18, 4, 12]  # prompt lengths, mixed so short and long ones share steps
NEW = 12


def _prompts(lens: list[int] = LENS) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 200, (n,), generator=g).tolist() for n in lens]


def _greedy(model, prompt: list[int], stops: list[int], pad: int):
    """transformers' greedy reply to one prompt (no padding), cut after its first stop, and
    the log-probs of its tokens."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
    reply = out.sequences[0, len(prompt) :].tolist()
    ends = [i for i, t in enumerate(reply) if t in stops]
    reply = reply[: ends[0] + 1] if ends else reply
    logps = [
        float(torch.log_softmax(x[0].float(), -1)[t])
        for x, t in zip(out.logits, reply, strict=True)
    ]
    return reply, logps


@pytest.mark.parametrize(
    ("name", "method"),
    [("tiny-llama", None), ("tiny-qwen2", None), ("tiny-llama", LORA), ("tiny-qwen2", LORA)],
    ids=["llama", "qwen2", "llama-lora", "qwen2-lora"],  # LoRA folded vs peft's forward
)
@pytest.mark.parametrize("shared", [0, 10], ids=["own-prompts", "shared-prefix"])
def test_greedy_continuous_batching_equals_transformers(name, method, shared):
    model, tok = eval_model(name, method)
    prefix = list(range(40, 40 + shared))  # a system prompt all prompts start with
    prompts, pad = [prefix + p for p in _prompts()], tok.pad_token_id
    free = [_greedy(model, p, [tok.eos_token_id], pad)[0] for p in prompts]
    # stops that fire mid-reply for some prompts: rows end at different steps, slots are
    # reused, and the last running row moves into a finished one's slot
    stops = [tok.eos_token_id]
    for t in (free[0][3], free[2][6], free[4][8], free[1][5]):
        if sum(any(x in stops + [t] for x in f) for f in free) < len(free):  # some run on
            stops.append(t)
    want = [_greedy(model, p, stops, pad) for p in prompts]
    ended = [w[-1] in stops for w, _ in want]
    assert 0 < sum(ended) < len(prompts) and len({len(w) for w, _ in want}) > 2  # the premise
    engine = Engine.create(model, 2, shared + max(LENS) + NEW, stops, fp16_weights=False)
    requests = [Request(p, NEW) for p in prompts]
    engine.run(requests, pad)
    # prefilled once, then copied into every slot (shorter prefixes are not shared)
    assert engine.stats["shared_prefix_tokens"] == shared
    assert [r.tokens for r in requests] == [w for w, _ in want]
    for r, (_, logps) in zip(requests, want, strict=True):
        assert r.finished == (r.tokens[-1] in stops)
        assert not any(t in stops for t in r.tokens[:-1])
        # the logits agree too, not just their argmax (measured: within 1e-6)
        torch.testing.assert_close(torch.tensor(r.logps), torch.tensor(logps), atol=1e-5, rtol=0)
    assert engine.stats["new_tokens"] == sum(len(w) for w, _ in want)


def test_logps_are_the_models_log_softmax():
    model, tok = eval_model("tiny-llama", LORA)
    prompts = _prompts()
    temps = [1.0, 0.7] * 3  # two sampling groups in one step
    requests = [
        Request(p, 6 + i, temperature=t, top_p=0.5, seed=i)  # rows end at different steps
        for i, (p, t) in enumerate(zip(prompts, temps, strict=True))
    ]
    engine = Engine.create(model, 2, max(LENS) + NEW, [tok.eos_token_id], fold_adapters=False)
    engine.run(requests, tok.pad_token_id)
    for r in requests:
        assert len(r.logps) == len(r.tokens) > 0
        ids = torch.tensor([r.prompt + r.tokens])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(r.prompt) - 1 : -1].float()
        logp = torch.log_softmax(logits / r.temperature, -1)  # the full tempered distribution
        want = logp.gather(1, torch.tensor(r.tokens)[:, None])
        torch.testing.assert_close(torch.tensor(r.logps), want[:, 0], atol=1e-4, rtol=0)  # 1e-6
        # drawn from the nucleus: the tokens likelier than it hold at most top_p of the mass
        assert (logp.exp().where(logp > want, 0).sum(-1) <= r.top_p + 1e-6).all()


def test_a_sampled_reply_depends_on_its_seed_not_on_its_neighbours():
    model, tok = eval_model("tiny-qwen2")
    prompts = _prompts([3, 25, 9, 14, 5])

    def run(slots: int, which, seed: int = 10) -> dict[int, list[int]]:
        requests = {i: Request(prompts[i], NEW - i, 1.0, 0.9, seed=seed + i) for i in which}
        engine = Engine.create(model, slots, 25 + NEW, [tok.eos_token_id])
        engine.run(list(requests.values()), tok.pad_token_id)
        return {i: r.tokens for i, r in requests.items()}

    one, two, five = run(1, range(5)), run(2, range(5)), run(5, range(5))
    assert one == two == five
    assert run(1, [3])[3] == five[3]
    assert run(1, [3], seed=20)[3] != five[3]  # the seed does matter


def test_fp16_weights_stay_within_their_round_off():
    if not fp16_weights_available(torch.device("cpu"), torch.float32):
        pytest.skip("fbgemm fp16 linear needs an x86 CPU with AVX2")
    model, tok = eval_model("tiny-llama")
    torch.manual_seed(1)
    b, width = 4, 9
    ids, new = torch.randint(3, 200, (b, width)), torch.randint(3, 200, (b,))
    pos = torch.arange(width).expand(b, -1)
    mask = torch.ones(b, width + 1, dtype=torch.long)
    logits = {}
    with torch.no_grad():
        for mode in ("transformers", "fp32", "fp16"):
            cache = reserved_cache(model, width + 1)
            model(input_ids=ids, position_ids=pos, past_key_values=cache)
            if mode == "transformers":
                out = model(input_ids=new[:, None], past_key_values=cache)
                logits[mode] = out.logits[:, -1].float()
            else:
                fp16 = mode == "fp16"
                plan = Engine.create(model, 1, 16, [tok.eos_token_id], fp16_weights=fp16).plan
                logits[mode] = plan.step(new, pos[:, -1] + 1, mask, cache)
    want = logits["transformers"]
    scale = float(want.abs().max())
    torch.testing.assert_close(logits["fp32"], want, atol=1e-5 * scale, rtol=0)
    # fp16 weights: measured max error 2.3e-4 of the scale (3.2e-4 at most over 5 seeds)
    torch.testing.assert_close(logits["fp16"], logits["fp32"], atol=1e-3 * scale, rtol=0)
    assert not torch.equal(logits["fp16"], logits["fp32"])  # the fp16 path really ran


def test_models_without_a_lean_step_keep_the_static_path(monkeypatch):
    model, tok = eval_model("tiny-llama", {"name": "dora", "r": 4})
    assert Engine.create(model, 2, 16, [tok.eos_token_id]) is None
    calls = []
    static = infer._generate_static
    monkeypatch.setattr(infer, "_generate_static", lambda *a: calls.append(1) or static(*a))
    out = generate(model, tok, ["alpha beta", "red", "one two"], GenerationParams(8, batch_size=2))
    assert len(out) == 3 and all(isinstance(t, str) for t in out) and calls == [1]


def test_unknown_weights_are_refused():
    model, tok = eval_model("tiny-llama")
    with pytest.raises(StropError, match="weights"):
        generate(model, tok, ["hi"], GenerationParams(weights="bogus"))


def test_rows_shrink_to_fit_the_kv_budget(monkeypatch):
    import strop.engine as engine_mod

    model, tok = eval_model("tiny-llama")
    prompts, cap = _prompts(), max(LENS) + NEW
    per_row = cap * engine_mod.kv_bytes_per_token(model, torch.float32)
    wide = Engine.create(model, 4, cap, [tok.eos_token_id])
    monkeypatch.setattr(engine_mod, "KV_BUDGET_BYTES", 2 * per_row + 1)
    narrow = Engine.create(model, 4, cap, [tok.eos_token_id])
    assert len(wide.cache.lengths) == 4 and len(narrow.cache.lengths) == 2
    runs = []
    for engine in (wide, narrow):
        requests = [Request(p, NEW) for p in prompts]
        engine.run(requests, tok.pad_token_id)
        runs.append([r.tokens for r in requests])
    assert runs[0] == runs[1]
