"""torch.autograd.gradcheck (float64, finite differences vs analytic gradients) on the LoRA and
DoRA layers strop trains: strop's fused LoRA function and peft's DoRA linear layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from strop.models.fused_lora import _LoraLinear


@pytest.mark.parametrize("bias", [True, False])
def test_fused_lora_function_gradcheck(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 6, dtype=torch.float64, generator=g)  # frozen base weight
    b = torch.randn(5, dtype=torch.float64, generator=g) if bias else None
    a = torch.randn(2, 6, dtype=torch.float64, generator=g, requires_grad=True)
    bb = torch.randn(5, 2, dtype=torch.float64, generator=g, requires_grad=True)

    def f(x, a, bb):
        return _LoraLinear.apply(x, w, b, a, bb, 0.75, None)

    assert torch.autograd.gradcheck(f, (x, a, bb), eps=1e-6, atol=1e-7)


class _One(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)

    def forward(self, x):
        return self.lin(x)


def _dora_model():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(
        r=2, lora_alpha=4, target_modules=["lin"], use_dora=True, init_lora_weights=False
    )
    model = get_peft_model(_One().double(), cfg).double()
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return model, params


def _name(params, part):
    return next(n for n in params if part in n)


def test_dora_layer_gradcheck_for_inputs_and_magnitude():
    """Exact gradients w.r.t. the input and the magnitude vector m (the weight norm does not
    depend on either)."""
    model, params = _dora_model()
    m = _name(params, "lora_magnitude_vector")
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def f(x, mag):
        return functional_call(model, {**params, m: mag}, (x,))

    assert torch.autograd.gradcheck(f, (x, params[m].requires_grad_(True)), eps=1e-6, atol=1e-7)


def test_dora_lora_gradients_follow_the_papers_detached_norm():
    """DoRA (Liu et al., 2024, sec. 4.3) treats ||W + s B A|| as a constant in backward to save
    memory, so A/B gradients are *not* the exact derivative (finite differences disagree, by
    design). Check them against a float64 reference of y = m / sg(||W + sBA||_c) (W + sBA) x + b
    written from the paper."""
    model, params = _dora_model()
    a, b, m = (params[_name(params, k)] for k in ("lora_A", "lora_B", "lora_magnitude_vector"))
    base = model.base_model.model.lin
    w, bias, s = base.base_layer.weight.detach(), base.base_layer.bias.detach(), 2.0
    x = torch.randn(4, 6, dtype=torch.float64)
    target = torch.randn(4, 5, dtype=torch.float64)

    ref_a, ref_b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    merged = w + s * ref_b @ ref_a
    y = (m / merged.norm(dim=1).detach())[None, :] * (x @ merged.T) + bias
    ((y - target) ** 2).sum().backward()

    got = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    out = functional_call(model, got, (x,))
    assert torch.allclose(out, y, atol=1e-10)  # the reference is the same function
    ((out - target) ** 2).sum().backward()
    assert torch.allclose(got[_name(got, "lora_A")].grad, ref_a.grad, atol=1e-10)
    assert torch.allclose(got[_name(got, "lora_B")].grad, ref_b.grad, atol=1e-10)
