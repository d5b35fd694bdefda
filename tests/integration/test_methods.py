"""full / freeze / bitfit / lora: exactly the intended parameters train, options take effect."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from strop.config import load_config
from strop.errors import StropError
from strop.models.load import load_model
from strop.models.transforms import parse_method
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl


def _train(tmp_path, model, method, **train_kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=16)
    raw = tiny_config(
        tmp_path / "run",
        data,
        model={"name": model},
        method=method,
        train={"max_steps": 2, "lr": 1e-2, **train_kw},
    )
    return train(load_config(None, raw=raw))


def _changed(base_dir, final_dir) -> set[str]:
    before = load_file(base_dir / "model.safetensors")
    after = load_file(final_dir / "model.safetensors")
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_bitfit_trains_only_biases(tmp_path, tiny_qwen2_dir):
    run = _train(tmp_path, "tiny-qwen2", {"name": "bitfit"})
    changed = _changed(tiny_qwen2_dir, run.final_dir)
    assert changed and all(k.endswith(".bias") for k in changed)


def test_bitfit_refuses_a_model_without_biases(tmp_path):
    with pytest.raises(StropError, match="no bias parameters"):
        _train(tmp_path, "tiny-llama", {"name": "bitfit"})


def test_freeze_trains_only_chosen_layers_and_patterns(tmp_path, tiny_llama_dir):
    run = _train(
        tmp_path,
        "tiny-llama",
        {"name": "freeze", "trainable_layers": [1], "trainable_patterns": ["^model\\.norm"]},
    )
    changed = _changed(tiny_llama_dir, run.final_dir)
    assert changed and all(k.startswith(("model.layers.1.", "model.norm")) for k in changed)
    assert "model.norm.weight" in changed
    with pytest.raises(StropError, match="do not exist"):
        _train(tmp_path / "x", "tiny-llama", {"name": "freeze", "trainable_layers": [7]})


def test_full_changes_everything_that_gets_gradient(tmp_path, tiny_llama_dir):
    run = _train(tmp_path, "tiny-llama", {"name": "full"})
    changed = _changed(tiny_llama_dir, run.final_dir)
    assert {"lm_head.weight", "model.layers.0.self_attn.q_proj.weight"} <= changed


def test_lora_final_is_a_standard_peft_adapter(tmp_path, tiny_llama_dir):
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    run = _train(tmp_path, "tiny-llama", {"name": "lora", "r": 4, "rslora": True})
    cfg = PeftConfig.from_pretrained(run.final_dir)
    assert cfg.base_model_name_or_path == str(tiny_llama_dir) and cfg.use_rslora and cfg.r == 4
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model_name_or_path)
    PeftModel.from_pretrained(base, run.final_dir)  # loads with plain peft
    assert (run.final_dir / "tokenizer.json").exists()
    assert "{%" in (run.final_dir / "chat_template.jinja").read_text()


def test_loraplus_gives_b_matrices_a_larger_learning_rate(tiny_llama_dir):
    from strop.config.schema import TrainSection
    from strop.train.optim import build_optimizer

    model, _, _ = load_model(str(tiny_llama_dir))
    transform, params = parse_method({"name": "lora", "r": 4, "loraplus_lr_ratio": 16})
    model = transform.apply(model, params)
    opt = build_optimizer(model, TrainSection(lr=1e-4), transform.lr_multipliers(model, params))
    by_lr = {}
    for g in opt.param_groups:
        for p in g["params"]:
            by_lr[id(p)] = g["lr"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert by_lr[id(p)] == pytest.approx(1.6e-3 if "lora_B" in name else 1e-4), name
