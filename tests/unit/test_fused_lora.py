"""Fused LoRA linear == peft's LoRA: outputs and gradients to 1e-5 in fp32."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from strop.models.fused_lora import fuse_lora_layers


def _pair(bias: bool, rslora: bool):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 20, bias=bias), nn.GELU(), nn.Linear(20, 7, bias=bias))
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["0", "2"], init_lora_weights=False, use_rslora=rslora
    )
    ref = get_peft_model(base, cfg)
    fused = copy.deepcopy(ref)
    assert fuse_lora_layers(fused) == 2
    return ref, fused


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rslora", [True, False])
def test_outputs_and_gradients_match_peft(bias, rslora):
    ref, fused = _pair(bias, rslora)
    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(1))
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [m(xi) for m, xi in zip((ref, fused), xs, strict=True)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for o in outs:
        (o.square().sum()).backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-5, atol=1e-5)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in (ref, fused)]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 4
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-5, msg=n)
    # The frozen base gets no gradient at all.
    assert all(p.grad is None for n, p in fused.named_parameters() if "base_layer" in n)


def test_falls_back_to_peft_when_adapters_are_disabled_or_merged():
    ref, fused = _pair(True, False)
    x = torch.randn(4, 12)
    with fused.disable_adapter(), ref.disable_adapter():
        torch.testing.assert_close(fused(x), ref(x))
    fused.merge_adapter()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_follows_linear_semantics():
    ref, fused = _pair(True, False)
    x = torch.randn(4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ref(x), fused(x)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-2)
