"""Equivalence classes (DESIGN.md §3): accumulation, packing, LoRA identities."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from strop.config import load_config
from strop.data.batching import collate, pack, unpacked
from strop.data.dataset import build_datasets
from strop.models.load import load_model
from strop.models.transforms import parse_method
from strop.train.loop import train
from strop.train.objectives.causal_lm import CausalLMObjective
from tests.helpers import tiny_config, write_chat_jsonl


def _run(tmp_path, name, data, **sections):
    cfg = load_config(None, raw=tiny_config(tmp_path / name, data, **sections))
    return train(cfg)


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "lora", "r": 4, "init": "gaussian"}])
def test_batch_times_accum_is_equivalent_with_ragged_lengths(tmp_path, method):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=32, turns=(1, 3))
    runs = {
        (bs, acc): _run(
            tmp_path,
            f"b{bs}a{acc}",
            data,
            method=method,
            train={"batch_size": bs, "grad_accum": acc, "max_steps": 3},
        )
        for bs, acc in [(8, 1), (1, 8), (2, 4)]
    }
    ref = runs[(8, 1)]
    weights = "model.safetensors" if method["name"] == "full" else "adapter_model.safetensors"
    ref_w = load_file(ref.final_dir / weights)
    for key, run in runs.items():
        for a, b in zip(ref.history, run.history, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), key
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), key
            assert a["tokens"] == b["tokens"]
        w = load_file(run.final_dir / weights)
        for name, t in ref_w.items():
            torch.testing.assert_close(w[name], t, rtol=1e-5, atol=1e-5, msg=f"{key} {name}")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_unpacked_loss_and_grads(tmp_path, tiny_llama_dir, attn):
    """sdpa: one causal kernel per document (strop_docs); eager: explicit 4-D masks."""
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=12, turns=(1, 3))
    cfg = load_config(None, raw=tiny_config(tmp_path / "run", data))
    model, tok, _ = load_model(str(tiny_llama_dir), attn=attn)
    samples = build_datasets(cfg.data, "sft", tok, seed=0).train.samples
    obj = CausalLMObjective(model, loss_chunk=32)
    results = []
    for rows in (pack(samples, 512), unpacked(samples)):
        model.zero_grad()
        out = obj(**collate(rows, tok.pad_token_id, doc_attention=attn == "sdpa"))
        out["loss_sum"].backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((out["loss_sum"].item(), out["n_targets"].item(), grads, len(rows)))
    (lp, np_, gp, rows_p), (lu, nu, gu, rows_u) = results
    assert rows_p < rows_u  # packing really packed
    assert np_ == nu
    assert lp == pytest.approx(lu, rel=1e-5)
    for a, b in zip(gp, gu, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # And both equal the plain HF loss computed one conversation at a time.
    ref = 0.0
    for s in samples:
        ids = torch.tensor([s.input_ids])
        labels = torch.tensor([s.labels])
        out = model(input_ids=ids, labels=labels)
        ref += out.loss.item() * (labels[0, 1:] != -100).sum().item()
    assert lp == pytest.approx(ref, rel=1e-5)


def test_lora_with_zero_b_is_the_base_model(tiny_llama_dir):
    base, tok, _ = load_model(str(tiny_llama_dir))
    ids = torch.randint(0, 250, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = base(input_ids=ids).logits.clone()
    transform, params = parse_method({"name": "lora", "r": 8, "targets": "all-linear"})
    lora = transform.apply(base, params)
    assert any("lora_B" in n for n, _ in lora.named_parameters())
    with torch.no_grad():
        out = lora(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_merged_lora_equals_unmerged(tmp_path):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)
    run = _run(
        tmp_path,
        "run",
        data,
        method={"name": "lora", "r": 4},
        train={"save_merged": True, "max_steps": 3, "lr": 5e-2},
    )
    adapted, _, base_dir = load_model("tiny-llama", adapter=str(run.final_dir))
    merged, _, _ = load_model(str(run.run_dir / "final-merged"))
    plain, _, _ = load_model(str(base_dir))
    ids = torch.randint(0, 250, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, m, p = (x(input_ids=ids).logits for x in (adapted, merged, plain))
    torch.testing.assert_close(m, a, rtol=1e-5, atol=1e-5)
    assert (a - p).abs().max() > 1e-3  # training really moved the adapter
