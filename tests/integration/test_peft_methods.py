"""DoRA and IA3: start at the base model, train only their own parameters, save standard peft
adapters that plain peft loads, and merge into the base without changing the logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from strop.config import load_config
from strop.models.load import load_model
from strop.models.transforms import parse_method
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl

METHODS = {
    "dora": {"name": "dora", "r": 4},
    "ia3": {"name": "ia3"},
}
OWN_PARAMS = {
    "dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
    "ia3": ("ia3_l",),
}


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 250, (2, 17), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short training run per method, with final-merged/ (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("peft_methods")
    data = write_chat_jsonl(tmp / "chat.jsonl", n=16)
    out = {}
    for key, method in METHODS.items():
        raw = tiny_config(
            tmp / key,
            data,
            method=method,
            train={"max_steps": 3, "lr": 5e-2, "save_merged": True},
        )
        out[key] = train(load_config(None, raw=raw))
    return out


@pytest.mark.parametrize("key", METHODS)
def test_at_init_the_model_is_the_base_model(tiny_llama_dir, key):
    base, _, _ = load_model(str(tiny_llama_dir))
    ids = _ids()
    with torch.no_grad():
        ref = base(input_ids=ids).logits.clone()
    transform, params = parse_method(METHODS[key])
    model = transform.apply(base, params)
    assert any(OWN_PARAMS[key][0] in n for n, _ in model.named_parameters())
    with torch.no_grad():
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("key", METHODS)
def test_only_the_methods_own_parameters_train(tiny_llama_dir, key):
    model, _, _ = load_model(str(tiny_llama_dir))
    transform, params = parse_method(METHODS[key])
    model = transform.apply(model, params)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all(any(k in n for k in OWN_PARAMS[key]) for n in trainable), trainable
    for k in OWN_PARAMS[key]:  # every kind of the method's parameters is there
        assert any(k in n for n in trainable), k
    if key == "ia3":  # default targets: k/v outputs and the down projection's input
        kinds = {n.split(".")[-3] for n in trainable}
        assert kinds == {"k_proj", "v_proj", "down_proj"}


@pytest.mark.parametrize("key", METHODS)
def test_final_is_a_standard_peft_adapter_that_trained(runs, tiny_llama_dir, key):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = runs[key]
    final = run.final_dir
    cfg = json.loads((final / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_llama_dir)
    if key == "dora":
        assert cfg["peft_type"] == "LORA" and cfg["use_dora"] is True
    else:
        assert cfg["peft_type"] == "IA3"
    # Saved weights are only the method's, and they moved away from their init.
    weights = load_file(final / "adapter_model.safetensors")
    assert weights and all(any(k in n for k in OWN_PARAMS[key]) for n in weights)
    if key == "dora":
        assert any(w.abs().max() > 0 for n, w in weights.items() if "lora_B" in n)
    else:
        assert any(not torch.equal(w, torch.ones_like(w)) for w in weights.values())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in run.history)

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), final)
    ours, _, _ = load_model("tiny-llama", adapter=str(final))
    base, _, _ = load_model(str(tiny_llama_dir))
    ids = _ids(1)
    with torch.no_grad():
        a, b, p = (m(input_ids=ids).logits for m in (plain, ours, base))
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert (a - p).abs().max() > 1e-3  # training really moved the adapter


@pytest.mark.parametrize("key", METHODS)
def test_merged_equals_unmerged(runs, key):
    run = runs[key]
    adapted, _, _ = load_model("tiny-llama", adapter=str(run.final_dir))
    merged, _, _ = load_model(str(run.run_dir / "final-merged"))
    assert not any(k in n for n, _ in merged.named_parameters() for k in OWN_PARAMS[key])
    ids = _ids(2)
    with torch.no_grad():
        a, m = (x(input_ids=ids).logits for x in (adapted, merged))
    torch.testing.assert_close(m, a, rtol=1e-5, atol=1e-5)
