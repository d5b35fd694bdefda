"""Bottleneck adapters (method adapter): start at the base model, train only themselves (and
the norms when asked), overfit a tiny dataset, save/load in strop's format, generate."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from strop.cli import app
from strop.config import load_config
from strop.data.batching import Row, collate
from strop.errors import StropError
from strop.models import bottleneck
from strop.models.load import load_model
from strop.models.transforms import parse_method
from strop.train import artifacts
from strop.train.loop import train
from strop.train.objectives.causal_lm import CausalLMObjective
from strop.train.optim import build_optimizer
from tests.helpers import tiny_config, write_chat_jsonl
from tests.integration.test_peft_prompt_methods import peaky_base  # noqa: F401 (fixture)

SMALL = {"name": "adapter", "size": 8}
NORMS = {"name": "adapter", "size": 8, "train_norms": True, "positions": ["mlp"]}


def _ids(seed=0):
    return torch.randint(0, 250, (2, 13), generator=torch.Generator().manual_seed(seed))


def _adapted(base, method, seed=None):
    model, tok, _ = load_model(str(base))
    transform, params = parse_method(method)
    model = transform.apply(model, params)
    if seed is not None:  # move every trainable weight off its init, as training would
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval(), tok


@pytest.mark.parametrize("method", [SMALL, {**SMALL, "positions": ["attn"]}, NORMS])
def test_at_init_the_model_is_the_base_model(tiny_llama_dir, method):
    base, _, _ = load_model(str(tiny_llama_dir))
    with torch.no_grad():
        ref = base(input_ids=_ids()).logits.clone()
    model, _ = _adapted(tiny_llama_dir, method)
    with torch.no_grad():
        out = model(input_ids=_ids()).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # up projection starts at zero


@pytest.mark.parametrize("method", [SMALL, NORMS])
def test_only_adapters_and_asked_for_norms_change(tiny_llama_dir, method):
    model, _ = _adapted(tiny_llama_dir, method)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if bottleneck.CHILD in n}
    norms = trainable - adapters
    positions = {n.split(".")[4] for n in adapters}  # model.layers.<i>.strop_adapters.<pos>
    assert positions == set(method.get("positions", ["attn", "mlp"]))
    if method.get("train_norms"):
        assert norms and all("norm" in n for n in norms)
    else:
        assert not norms
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objective = CausalLMObjective(model)
    cfg = load_config(None, raw=tiny_config(tiny_llama_dir, "x.jsonl")).train
    opt = build_optimizer(objective, cfg)
    ids = list(range(30, 50))
    for _ in range(3):
        objective(**collate([Row(ids, ids, [12, 8])], 261))["loss_sum"].backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n  # frozen: bit-identical


@pytest.mark.parametrize("method", [SMALL, NORMS])
def test_save_then_load_gives_identical_logits(peaky_base, tmp_path, method):  # noqa: F811
    model, tok = _adapted(peaky_base, method, seed=1)
    with torch.no_grad():
        want = model(input_ids=_ids(2)).logits
    state = artifacts.full_state_dict(CausalLMObjective(model))
    final = tmp_path / "final"
    artifacts.save_final(model, state, tok, final, True, peaky_base)
    config = json.loads((final / bottleneck.CONFIG_FILE).read_text())
    assert config["format"] == bottleneck.FORMAT and config["version"] == 1
    assert config["base_model_name_or_path"] == str(peaky_base)
    assert config["size"] == 8 and config["num_layers"] == 2 and config["hidden_size"] == 64
    saved = load_file(final / bottleneck.WEIGHTS_FILE)
    norms = [k for k in saved if k.startswith("norms.")]
    assert bool(norms) == bool(method.get("train_norms"))
    assert all(k.startswith(("layers.", "norms.")) for k in saved)
    loaded, _, _ = load_model(str(peaky_base), adapter=str(final))
    with torch.no_grad():
        got = loaded(input_ids=_ids(2)).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_load_refuses_a_mismatched_base_or_file(peaky_base, tmp_path):  # noqa: F811
    model, tok = _adapted(peaky_base, SMALL, seed=1)
    final = tmp_path / "final"
    artifacts.save_final(
        model, artifacts.full_state_dict(CausalLMObjective(model)), tok, final, True, peaky_base
    )
    config = json.loads((final / bottleneck.CONFIG_FILE).read_text())
    (final / bottleneck.CONFIG_FILE).write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(StropError, match="64 x 3 layers, but the model has 64 x 2"):
        load_model(str(peaky_base), adapter=str(final))
    (final / bottleneck.CONFIG_FILE).write_text(json.dumps({**config, "version": 99}))
    with pytest.raises(StropError, match="not a strop.bottleneck_adapter version 1"):
        load_model(str(peaky_base), adapter=str(final))


@pytest.fixture(scope="module")
def run(peaky_base, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("adapter_run")
    data = write_chat_jsonl(tmp / "chat.jsonl", n=4)
    raw = tiny_config(
        tmp / "run",
        data,
        model={"name": str(peaky_base)},
        method={"name": "adapter", "size": 16},
        data={"packing": True},
        train={"max_steps": 40, "lr": 1e-2, "log_every": 100},
    )
    return train(load_config(None, raw=raw))


def test_overfits_a_tiny_dataset(run):
    # Measured 7.08 -> 1.95 (3.6x) over 40 steps at lr 1e-2.
    losses = [h["loss"] for h in run.history]
    assert losses[0] / losses[-1] > 2.5, (losses[0], losses[-1])


def test_cli_generate_with_the_adapter(run, peaky_base, tmp_path):  # noqa: F811
    runner = CliRunner()
    prompts = [{"prompt": "alpha beta gamma"}, {"prompt": "red"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))

    def completions(adapter: bool) -> list[str]:
        out = tmp_path / f"out-{adapter}.jsonl"
        args = ["generate", "-m", str(peaky_base), "-i", str(tmp_path / "in.jsonl")]
        args += ["-o", str(out), "--max-new-tokens", "8"]
        if adapter:
            args += ["--adapter", str(run.final_dir)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["completion"] for line in out.read_text().splitlines()]

    assert completions(True) != completions(False)


def test_bf16_model_keeps_fp32_adapters(tiny_llama_dir):
    model, _, _ = load_model(str(tiny_llama_dir), dtype="bf16")
    transform, params = parse_method(SMALL)
    model = transform.apply(model, params)
    assert {p.dtype for n, p in model.named_parameters() if p.requires_grad} == {torch.float32}
    with torch.no_grad():
        out = model(input_ids=_ids()).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("sections", "key", "says"),
    [
        ({"train": {"save_merged": True}}, "train.save_merged", "nonlinear"),
        ({"stage": "rm"}, "stage", "cannot train stage rm"),
    ],
)
def test_refusals_name_the_key(tmp_path, sections, key, says):
    raw = tiny_config(tmp_path, tmp_path / "x.jsonl", method={"name": "adapter"}, **sections)
    with pytest.raises(StropError) as err:
        load_config(None, raw=raw)
    assert key in str(err.value) and says in str(err.value)


def test_params_are_strict():
    with pytest.raises(StropError, match="positions"):
        parse_method({"name": "adapter", "positions": ["ffn"]})
    with pytest.raises(StropError, match="bottleneck|size"):
        parse_method({"name": "adapter", "bottleneck": 8})


def test_resume_is_exact(tmp_path):
    from tests.integration.test_peft_prompt_methods import resume_is_exact

    resume_is_exact(tmp_path, {**NORMS, "positions": ["attn", "mlp"]}, bottleneck.WEIGHTS_FILE)
