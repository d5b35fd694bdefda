"""A fused forward/backward for peft LoRA linear layers (same modules, same file format).

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate ops: on small
models the extra elementwise passes (scale, add) and the autograd bookkeeping of two more
Linear modules are memory-bound and make LoRA slower per token than it should be. Here one
autograd function computes, with W frozen:

    y  = x W^T (+ b) + s (x A^T) B^T            (the LoRA term accumulated in place by addmm)
    gx = g W + s (g B) A
    gA = s (g B)^T x          gB = s g^T (x A^T)

and no gradient is formed for W. Only vanilla LoRA without dropout on an nn.Linear base takes
this path; anything else (DoRA, dropout while training, merged or disabled adapters, several
active adapters) runs peft's own forward. Parity with peft is tested to 1e-5 in fp32.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, compute_dtype):
        in_dtypes = (x.dtype, lora_a.dtype, lora_b.dtype)
        # Under autocast follow it as nn.Linear would; otherwise compute in the input's dtype
        # (a bf16 base with fp32 adapters, as peft keeps them, computes in bf16).
        compute_dtype = compute_dtype or x.dtype
        x, weight, lora_a, lora_b = (t.to(compute_dtype) for t in (x, weight, lora_a, lora_b))
        bias = bias.to(compute_dtype) if bias is not None else None
        x2 = x.reshape(-1, x.shape[-1])  # [N, in]
        xa = x2 @ lora_a.T  # [N, r]
        y = torch.addmm(bias, x2, weight.T) if bias is not None else x2 @ weight.T
        y.addmm_(xa, lora_b.T, alpha=scaling)  # [N, out]
        ctx.save_for_backward(x2, xa, weight, lora_a, lora_b)
        ctx.scaling, ctx.in_dtypes, ctx.x_shape = scaling, in_dtypes, x.shape
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad_out):
        x2, xa, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(x2.dtype)  # [N, out]
        gb = (g @ lora_b).mul_(s)  # [N, r] = s * g B
        gx = (g @ weight).addmm_(gb, lora_a)  # [N, in]
        g_a = gb.T @ x2  # [r, in]
        g_b = (g.T @ xa).mul_(s)  # [out, r]
        x_dtype, a_dtype, b_dtype = ctx.in_dtypes
        return (
            gx.view(ctx.x_shape).to(x_dtype),
            None,
            None,
            g_a.to(a_dtype),
            g_b.to(b_dtype),
            None,
            None,
        )


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Replaces one peft lora.Linear instance's forward; falls back to peft's own."""
    active = [a for a in self.active_adapters if a in self.lora_A]
    dropout = self.lora_dropout[active[0]] if len(active) == 1 else None
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or len(active) != 1
        or active[0] in self.lora_variant
        or not (isinstance(dropout, nn.Identity) or not self.training)
        or self.base_layer.weight.requires_grad
    ):
        return self._peft_forward(x, *args, **kwargs)
    name = active[0]
    base = self.base_layer
    return _LoraLinear.apply(
        x,
        base.weight,
        base.bias,
        self.lora_A[name].weight,
        self.lora_B[name].weight,
        float(self.scaling[name]),
        _autocast_dtype(x.device.type),
    )


def fuse_lora_layers(model: nn.Module) -> int:
    """Give every peft LoRA Linear with an nn.Linear base the fused forward. Returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and type(module.base_layer) is nn.Linear:
            if not hasattr(module, "_peft_forward"):
                module._peft_forward = module.forward
                module.forward = types.MethodType(_fused_forward, module)
            n += 1
    return n
