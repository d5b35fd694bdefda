"""Prompt tuning, prefix tuning and P-tuning v1/v2 through strop's packed training forward.

The base is tiny-llama with its weight matrices scaled x10 (``peaky_base``): the stock tiny
model's 0.02-std weights give near-uniform logits that no input-side method can move (its
largest reachable logit is about 1.3), so soft prompts could not show that they learn.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from strop.cli import app
from strop.config import load_config
from strop.data.batching import Row, collate
from strop.errors import StropError
from strop.models.load import load_model
from strop.models.logps import decoder_hidden
from strop.models.transforms import parse_method
from strop.train import artifacts
from strop.train.loop import train
from strop.train.objectives.causal_lm import CausalLMObjective
from strop.train.optim import build_optimizer
from tests.helpers import tiny_config, write_chat_jsonl, write_preference_jsonl

METHODS = {
    "prompt": {"name": "prompt", "virtual_tokens": 8, "init_text": "answer with words"},
    "prefix": {"name": "prefix", "virtual_tokens": 8, "projection": True, "projection_hidden": 32},
    "ptuning": {"name": "ptuning", "virtual_tokens": 8},
    "ptuning-lstm": {"name": "ptuning", "virtual_tokens": 4, "encoder": "lstm"},
    "ptuning-deep": {"name": "ptuning", "virtual_tokens": 8, "deep": True},
}
PEFT_TYPE = {
    "prompt": "PROMPT_TUNING",
    "prefix": "PREFIX_TUNING",
    "ptuning": "P_TUNING",
    "ptuning-lstm": "P_TUNING",
    "ptuning-deep": "PREFIX_TUNING",  # P-tuning v2 is prefix tuning without projection
}
# Loss of 40 steps on 4 packed chats at lr 0.1, first step / last step. Measured: prompt 1.52,
# prefix (MLP) 2.29, ptuning (MLP) 1.33, ptuning deep 1.33; the bars leave some margin.
DROP = {"prompt": 1.3, "prefix": 1.8, "ptuning": 1.2, "ptuning-deep": 1.2}

runner = CliRunner()


@pytest.fixture(scope="module")
def peaky_base(tmp_path_factory):
    model, tok, _ = load_model("tiny-llama")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
    out = tmp_path_factory.mktemp("peaky") / "base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _adapted(base, key, seed=0):
    """The base with the method applied and its prompt parameters moved off their init."""
    model, tok, _ = load_model(str(base))
    transform, params = parse_method(METHODS[key])
    model = transform.apply(model, params)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval(), tok


def _logits(model, hidden):
    return model.get_base_model().lm_head(hidden)


@pytest.mark.parametrize("key", METHODS)
def test_every_document_of_a_packed_row_sees_its_own_virtual_tokens(peaky_base, key):
    """Packed (doc attention), batched and right-padded forwards all equal peft's own forward
    on each document alone, and the adapter changes the logits."""
    model, _ = _adapted(peaky_base, key)
    a, b = list(range(30, 41)), list(range(60, 66))
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([x])).logits[0] for x in (a, b)])
        packed = collate([Row(a + b, a + b, [len(a), len(b)])], 261, doc_attention=True)
        padded = collate([Row(a, a, [len(a)]), Row(b, b, [len(b)])], 261, doc_attention=False)
        got_packed = _logits(model, decoder_hidden(model, _inputs(packed)))[0]
        got_padded = _logits(model, decoder_hidden(model, _inputs(padded)))
        with model.disable_adapter():
            base = model(input_ids=torch.tensor([a])).logits[0]
    torch.testing.assert_close(got_packed, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_padded[0, : len(a)], alone[: len(a)], rtol=0, atol=1e-5)
    torch.testing.assert_close(got_padded[1, : len(b)], alone[len(a) :], rtol=0, atol=1e-5)
    assert (base - alone[: len(a)]).abs().max() > 1e-2


def _inputs(batch):
    keys = ("input_ids", "attention_mask", "position_ids", "strop_doc_lens")
    return {k: batch.get(k) for k in keys}


@pytest.mark.parametrize("key", ["prompt", "prefix", "ptuning-deep"])
def test_only_the_prompt_parameters_change(peaky_base, key):
    model, _ = _adapted(peaky_base, key)
    model.train()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prompt_encoder.") for n in trainable), trainable
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objective = CausalLMObjective(model)
    cfg = load_config(None, raw=tiny_config(peaky_base / "unused", "x.jsonl")).train
    opt = build_optimizer(objective, cfg)
    ids = list(range(30, 50))
    batch = collate([Row(ids, ids, [12, 8])], 261)
    for _ in range(3):
        objective(**batch)["loss_sum"].backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # frozen: bit-identical


@pytest.mark.parametrize("key", METHODS)
def test_save_then_load_gives_identical_logits(peaky_base, tmp_path, key):
    model, tok = _adapted(peaky_base, key, seed=1)
    ids = torch.randint(0, 250, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    state = artifacts.full_state_dict(CausalLMObjective(model))
    artifacts.save_final(model, state, tok, tmp_path / "final", True, peaky_base)
    cfg = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == PEFT_TYPE[key]
    assert cfg["base_model_name_or_path"] == str(peaky_base)
    loaded, _, _ = load_model(str(peaky_base), adapter=str(tmp_path / "final"))
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert got.shape == want.shape == (2, 13, 288)  # virtual positions never reach callers
    # peft saves the encoder's output (MLP/LSTM), recomputed at save time in another batch
    # shape: fp32 rounding on logits of magnitude ~30 (measured up to 5e-6 for the LSTM).
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def runs(peaky_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prompt_runs")
    data = write_chat_jsonl(tmp / "chat.jsonl", n=4)
    out = {}
    for key in DROP:
        raw = tiny_config(
            tmp / key,
            data,
            model={"name": str(peaky_base)},
            method=METHODS[key],
            data={"packing": True},
            train={"max_steps": 40, "lr": 0.1, "log_every": 100},
        )
        out[key] = train(load_config(None, raw=raw))
    return out


@pytest.mark.parametrize("key", DROP)
def test_overfits_a_tiny_dataset(runs, key):
    losses = [h["loss"] for h in runs[key].history]
    assert all(math.isfinite(x) for x in losses)
    assert losses[0] / losses[-1] > DROP[key], (losses[0], losses[-1])


@pytest.mark.parametrize("key", ["prompt", "prefix"])
def test_final_is_a_peft_adapter_plain_peft_loads(runs, peaky_base, key):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = runs[key].final_dir
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(peaky_base), final)
    ours, _, _ = load_model(str(peaky_base), adapter=str(final))
    ids = torch.randint(0, 250, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = plain(input_ids=ids).logits[:, -9:]  # peft's own forward keeps virtual positions
        b = ours(input_ids=ids).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", ["prompt", "ptuning-deep"])
def test_cli_generate_with_the_adapter_batched_equals_one_by_one(runs, peaky_base, tmp_path, key):
    prompts = [{"prompt": "alpha beta gamma delta"}, {"prompt": "red"}, {"prompt": "one two"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))

    def completions(batch_size: int, adapter: bool) -> list[str]:
        out = tmp_path / f"out-{batch_size}-{adapter}.jsonl"
        args = ["generate", "-m", str(peaky_base), "-i", str(tmp_path / "in.jsonl")]
        args += ["-o", str(out), "--max-new-tokens", "8", "--batch-size", str(batch_size)]
        if adapter:
            args += ["--adapter", str(runs[key].final_dir)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["completion"] for line in out.read_text().splitlines()]

    batched = completions(3, adapter=True)  # left-padded prompts of different lengths
    assert batched == completions(1, adapter=True)
    assert batched != completions(3, adapter=False)  # the adapter is in use


def test_dpo_trains_a_prefix(tmp_path, peaky_base):
    data = write_preference_jsonl(tmp_path / "pref.jsonl", n=8, seed=5)
    raw = tiny_config(
        tmp_path / "run",
        data,
        model={"name": str(peaky_base)},
        stage="dpo",
        method=METHODS["ptuning-deep"],
        train={"max_steps": 4, "lr": 0.05},
    )
    hist = train(load_config(None, raw=raw)).history
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert hist[-1]["loss"] < math.log(2) - 1e-3  # the prefix reached the sequence log-probs


@pytest.mark.parametrize(
    ("method", "sections", "key", "says"),
    [
        ("prompt", {"train": {"save_merged": True}}, "train.save_merged", "cannot be merged"),
        ("prefix", {"train": {"save_merged": True}}, "train.save_merged", "cannot be merged"),
        ("ptuning", {"stage": "rm"}, "stage", "cannot train stage rm"),
        ("prompt", {"stage": "grpo", "grpo": {"rewards": ["exact_match"]}}, "stage", "stage grpo"),
        ("prompt", {"model": {"attn": "eager"}, "data": {"packing": True}}, "data.packing", "sdpa"),
        ("prefix", {"train": {"gradient_checkpointing": True}}, "gradient_checkpointing", "prefix"),
    ],
)
def test_refusals_name_the_key(tmp_path, method, sections, key, says):
    raw = tiny_config(tmp_path, tmp_path / "x.jsonl", method={"name": method}, **sections)
    with pytest.raises(StropError) as err:
        load_config(None, raw=raw)
    assert key in str(err.value) and says in str(err.value)


def test_deep_ptuning_refuses_v1_encoder_options():
    with pytest.raises(StropError, match="encoder applies to P-tuning v1 only"):
        parse_method({"name": "ptuning", "deep": True, "encoder": "lstm"})
    with pytest.raises(StropError, match="encoder: lstm only"):
        parse_method({"name": "ptuning", "encoder_layers": 2})


def resume_is_exact(tmp_path, method: dict, weights_file: str) -> None:
    """3 steps + checkpoint, then resume to 6 == 6 uninterrupted steps (losses and weights)."""
    from safetensors.torch import load_file

    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)

    def run(out, steps, save_every=0):
        raw = tiny_config(
            out,
            data,
            method=method,
            data={"packing": True},
            train={
                "max_steps": steps,
                "lr": 5e-2,
                "schedule": "constant",
                "save_every": save_every,
            },
        )
        return train(load_config(None, raw=raw))

    whole = run(tmp_path / "whole", 6)
    run(tmp_path / "split", 3, save_every=3)
    resumed = run(tmp_path / "split", 6)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history[3:]]
    a = load_file(whole.final_dir / weights_file)
    b = load_file(resumed.final_dir / weights_file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("key", ["prompt", "prefix"])
def test_resume_is_exact(tmp_path, key):
    resume_is_exact(tmp_path, METHODS[key], "adapter_model.safetensors")
