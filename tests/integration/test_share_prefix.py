"""data.share_prefix: documents opening with the same non-target tokens compute them once.
The layout must change nothing but the work: loss, gradients and whole runs are those of the
unshared layout."""

from __future__ import annotations

import json
import random

import pytest
import torch

from strop.config import load_config
from strop.data.batching import SHARE_MIN_TOKENS, pack, shared_prefix_length, shared_tokens
from strop.data.dataset import build_datasets
from strop.data.render import IGNORE
from strop.errors import StropError
from strop.models.load import load_model
from strop.models.transforms import parse_method
from strop.train.loop import train
from strop.train.objectives.causal_lm import CausalLMObjective
from tests.helpers import tiny_config

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]
SYSTEM = "Answer tersely."  # one shared system prompt (tiny-llama's tokens are characters)


def _chat(path, n=16, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            messages = [{"role": "system", "content": SYSTEM}]
            for _ in range(rng.randint(1, 2)):
                messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=3))})
                messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=2))})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_shared_prefix_length_stops_before_targets_and_keeps_a_suffix():
    ign = IGNORE
    docs = [([1, 2, 3, 4, 5], [ign, ign, ign, 4, 5]), ([1, 2, 3, 9, 9, 9], [ign] * 4 + [9, 9])]
    assert shared_prefix_length(docs) == 2  # token 3 is a target of doc 0: not shared
    assert shared_prefix_length(docs[:1]) == 0  # one document: nothing to share
    assert shared_prefix_length([([1, 2], [ign, ign]), ([1, 2], [ign, ign])]) == 1  # a suffix each
    assert shared_prefix_length([([7, 2, 3], [ign] * 3), ([1, 2, 3], [ign] * 3)]) == 0
    # raw text (every token a target; the first never counts): nothing is shareable
    assert shared_prefix_length([([1, 2, 3], [1, 2, 3]), ([1, 2, 4], [1, 2, 4])]) == 0


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "lora", "r": 4, "init": "gaussian"}])
def test_shared_prefix_gives_the_loss_and_gradients_of_the_unshared_layout(tmp_path, method):
    data = _chat(tmp_path / "chat.jsonl")
    cfg = load_config(None, raw=tiny_config(tmp_path / "run", data))
    torch.manual_seed(0)
    model, tok, _ = load_model("tiny-llama", "fp32")
    transform, params = parse_method(method)
    model = transform.apply(model, params).double()  # float64: only the layout may differ
    samples = build_datasets(cfg.data, "sft", tok, seed=0).train.samples
    rows = pack(samples, 200)
    assert any(len(r.doc_lens) > 1 for r in rows)  # packed rows with several documents
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = []
    for share in (False, True):
        obj = CausalLMObjective(model, loss_chunk=32, share_prefix=share)
        model.zero_grad()
        batch = obj.collate(rows, tok.pad_token_id, True)
        out = obj(**batch)
        out["loss_sum"].backward()
        results.append((batch, out, [p.grad.clone() for p in trainable]))
    (plain, out_p, grads_p), (shared, out_s, grads_s) = results
    p = shared["strop_shared_prefix"][0]
    n_docs = sum(len(r.doc_lens) for r in rows)
    assert p >= SHARE_MIN_TOKENS
    assert shared["input_ids"].shape[1] == plain["input_ids"].shape[1] - (n_docs - 1) * p
    assert shared_tokens(shared) == (shared["input_ids"].numel(), (n_docs - 1) * p)
    assert shared_tokens(plain) == (plain["input_ids"].numel(), 0)
    assert out_s["n_targets"] == out_p["n_targets"]
    assert out_s["loss_sum"].item() == pytest.approx(out_p["loss_sum"].item(), rel=1e-12)
    # Not bitwise: Llama's RMSNorm computes in fp32 even in a float64 model, and the prefix's
    # gradient goes through it once summed instead of once per document (~3e-8 of the scale;
    # a document's missing or doubled contribution would be of the order of the scale).
    for a, b in zip(grads_s, grads_p, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * float(b.abs().max()))


def test_a_run_with_share_prefix_equals_the_run_without(tmp_path):
    data = _chat(tmp_path / "chat.jsonl", n=24)
    runs = [
        train(
            load_config(
                None,
                raw=tiny_config(
                    tmp_path / f"run{share}",
                    data,
                    method={"name": "lora", "r": 4},
                    data={"packing": True, "share_prefix": share, "eval": 0.2},
                    train={"batch_size": 2, "grad_accum": 2, "max_steps": 3, "eval_every": 3},
                ),
            )
        )
        for share in (False, True)
    ]
    for a, b in zip(runs[0].history, runs[1].history, strict=True):
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
        assert a["tokens"] == b["tokens"]
        assert "shared_frac" not in a and 0 < b["shared_frac"] < 1


REFUSALS = [
    ({"stage": "dpo"}, "stage dpo"),
    ({"model": {"name": "tiny-llama", "attn": "eager"}}, "model.attn: sdpa"),
    ({"method": {"name": "prompt", "virtual_tokens": 4}}, "method prompt"),
]


@pytest.mark.parametrize(("sections", "needle"), REFUSALS)
def test_share_prefix_refuses_what_it_cannot_honour(tmp_path, sections, needle):
    raw = tiny_config(tmp_path / "run", tmp_path / "x.jsonl", data={"share_prefix": True})
    raw.update(sections)
    with pytest.raises(StropError, match="data.share_prefix") as err:
        load_config(None, raw=raw)
    assert needle in str(err.value)


@pytest.mark.parametrize("sections", [{}, *(s for s, _ in REFUSALS)])
def test_share_prefix_auto_is_on_exactly_where_it_can_be(tmp_path, sections):
    """The default (auto) shares in sft with sdpa and a non-prompt method, and quietly does
    not where true would be refused."""
    raw = tiny_config(tmp_path / "run", tmp_path / "x.jsonl")
    raw.update(sections)
    cfg = load_config(None, raw=raw)
    assert cfg.data.share_prefix == "auto"
    assert cfg.shares_prefixes is (sections == {})
