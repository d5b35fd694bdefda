"""Decoding one token per row, fast: a reserved KV cache and a lean decode step for the
Llama family (llama, qwen2, mistral with full attention), used by the rollout engine.

Why not transformers' forward: at rollout shapes on a CPU (32 rows, one new token each, a
135M model) a transformers decoder layer issues about a hundred small ops per step (per-linear
casts, LoRA as three ops per projection, a cache that concatenates, attention that repeats
keys), and those cost more than the matmuls. ``DecodePlan.step`` runs per layer: RMSNorm, one
matmul for q/k/v (their weights concatenated once per rollout; LoRA as one matmul into the
concatenated A and one into a block-diagonal B), rotary embedding, attention, o, RMSNorm, one
matmul for gate/up, the activation, down. Attention lays the G query heads that share a
key/value head out as G query positions of that head: the same result as grouped-query
attention, without repeating keys, and SDPA's CPU kernel runs it ~4x faster than with
``enable_gqa``.

The dtype flow is transformers' own (under autocast: fp32 residual stream and norms, linear
layers and attention in the autocast dtype, keys rotated in the residual dtype and then cast),
so logits agree with the transformers forward to round-off (tests/unit/test_fast_decode.py).
Anything else (other architectures, forward hooks, quantised, DoRA or IA3 layers, prompt
learning, logit transforms) gets no plan, and the caller keeps transformers' forward.

Memory: a plan holds the q/k/v and gate/up weights concatenated (about three quarters of the
decoder's linear weights, in the compute dtype) for as long as the rollout runs; o, down and
the LM head are the model's own tensors when they are already in that dtype.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from strop.models.logps import causal_lm_of, has_logit_transform
from strop.models.prompt_learning import active_config

FAMILIES = {"llama", "qwen2", "mistral"}


def reserved_cache(model, capacity: int):
    """A transformers DynamicCache whose layers write each step's keys and values into buffers
    reserved for ``capacity`` positions, instead of concatenating: DynamicLayer copies the whole
    cache of every layer at every decode step (for SmolLM2 with 32 rows, a tenth of the step).
    Models with other layer kinds (sliding windows, linear attention) keep the plain cache."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def __init__(self):
            super().__init__()
            self.length = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                (b, hk, _, dk), (_, hv, _, dv) = key_states.shape, value_states.shape
                self.k_buf = key_states.new_empty(b, hk, capacity, dk)
                self.v_buf = value_states.new_empty(b, hv, capacity, dv)
            end = self.length + key_states.shape[-2]
            if end > self.k_buf.shape[-2]:  # never in the rollout; kept correct all the same
                self.k_buf = torch.cat([self.k_buf[:, :, : self.length], key_states], -2)
                self.v_buf = torch.cat([self.v_buf[:, :, : self.length], value_states], -2)
            else:
                self.k_buf[:, :, self.length : end] = key_states
                self.v_buf[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def append(self, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype):
            """The lean step's write: every row's new key/value [B, KV, hd] at the next
            column (keys prefilled in the residual dtype are cast to ``dtype`` once); returns
            the keys and values to attend to."""
            if self.k_buf.dtype != dtype:
                self.k_buf, self.v_buf = self.k_buf.to(dtype), self.v_buf.to(dtype)
            self.k_buf[:, :, self.length] = k
            self.v_buf[:, :, self.length] = v
            self.length += 1
            self.keys = self.k_buf[:, :, : self.length]
            self.values = self.v_buf[:, :, : self.length]
            return self.keys, self.values

        def _rebuild(self, pick) -> None:
            if self.is_initialized:
                self.k_buf, self.v_buf = pick(self.k_buf), pick(self.v_buf)
                self.keys = self.k_buf[:, :, : self.length]
                self.values = self.v_buf[:, :, : self.length]

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._rebuild(lambda buf: buf.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._rebuild(lambda buf: buf[indices])

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("the reserved rollout cache never crops")

    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [ReservedLayer() for _ in cache.layers]
        cache.reserved = True
    return cache


@dataclass
class _Projection:
    """Several linear layers reading the same input, as one: y = x W^T (+ b) (+ (x A^T) B^T)."""

    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None  # [out]
    lora_a: torch.Tensor | None  # [R, in]: the layers' A stacked
    lora_b: torch.Tensor | None  # [out, R]: their scaled B, block-diagonal
    packed: object = None  # fbgemm's fp16 copy of (weight, bias), when decoding with fp16 weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            y = torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        elif self.bias is None:
            y = x @ self.weight.T
        else:
            y = torch.addmm(self.bias, x, self.weight.T)
        if self.lora_a is not None:
            y.addmm_(x @ self.lora_a.T, self.lora_b.T)
        return y


def _linear_parts(module: nn.Module):
    """(W, b, A, s*B) of an nn.Linear (A, B None) or of a peft LoRA layer over one, exactly as
    its forward uses them; None for anything else."""
    if type(module) is nn.Linear:
        return module.weight, module.bias, None, None
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or type(module.base_layer) is not nn.Linear:
        return None
    base = module.base_layer
    if module.merged or module.disable_adapters:  # the forward is the base layer's alone
        return base.weight, base.bias, None, None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(module, "lora_variant", {}) or module.use_dora.get(name, False):
        return None
    if module.lora_B[name].bias is not None:
        return None
    return (
        base.weight,
        base.bias,
        module.lora_A[name].weight,
        module.lora_B[name].weight * float(module.scaling[name]),
    )


def fp16_weights_available(device: torch.device, dtype: torch.dtype) -> bool:
    """fbgemm's fp16-weight linear serves this step: fp32 compute on an x86 CPU with AVX2 or
    better (where bf16 autocast is emulated and slow, docs/performance.md "Generation")."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and "fbgemm" in torch.backends.quantized.supported_engines
        and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    )


def _projection(
    modules: list[nn.Module], dtype: torch.dtype, fold: bool = False, fp16: bool = False
) -> _Projection | None:
    """The modules as one projection in ``dtype``; ``fold``: LoRA adapters added into the
    weight copy (W + s B A, computed in fp32), so a step costs what the base model's does;
    ``fp16``: the weight stored in fp16, computed in fp32 (fbgemm: half the bytes a step
    streams, relative error of a product ~2e-4)."""
    parts = [_linear_parts(m) for m in modules]
    if any(p is None for p in parts):
        return None
    if fold:
        parts = [
            (w if a is None else torch.addmm(w.float(), b.float(), a.float()), bias, None, None)
            for w, bias, a, b in parts
        ]
    weights = [w.to(dtype) for w, _, _, _ in parts]
    weight = weights[0] if len(weights) == 1 else torch.cat(weights)  # no copy of a lone head
    bias = None
    if any(b is not None for _, b, _, _ in parts):
        bias = torch.cat(
            [(b if b is not None else w.new_zeros(len(w))).to(dtype) for w, b, _, _ in parts]
        )
    lora_a = lora_b = None
    if any(a is not None for _, _, a, _ in parts):
        lora_a = torch.cat(
            [(a if a is not None else w.new_zeros(0, w.shape[1])).to(dtype) for w, _, a, _ in parts]
        )
        lora_b = torch.block_diag(
            *[(b if b is not None else w.new_zeros(len(w), 0)).to(dtype) for w, _, _, b in parts]
        )
    packed = None
    if fp16:
        packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), bias)
        weight = bias = None  # only the packed copy is read
    return _Projection(weight, bias, lora_a, lora_b, packed)


def _rms_norm(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """transformers' Llama RMSNorm: fp32 statistics, weight * normalised.to(input dtype)."""
    eps = norm.variance_epsilon
    if h.dtype == norm.weight.dtype == torch.float32:
        return F.rms_norm(h, (h.shape[-1],), norm.weight, eps)  # one kernel, the same values
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return norm.weight * x.to(h.dtype)


@dataclass
class _Layer:
    attn_norm: nn.Module
    qkv: _Projection
    o: _Projection
    mlp_norm: nn.Module
    gate_up: _Projection
    down: _Projection
    act: nn.Module


class DecodePlan:
    """The lean decode step of one model, with its weights as they are now (build one per
    rollout: the policy never samples with stale weights)."""

    def __init__(self, lm: nn.Module, layers: list[_Layer], head: _Projection, dtype):
        cfg = lm.config
        attn = lm.model.layers[0].self_attn
        self.lm, self.layers, self.head, self.dtype = lm, layers, head, dtype
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb

    @torch.no_grad()
    def step(self, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, cache):
        """Logits [B, V] (fp32) for one new token per row: ``ids`` [B] at ``positions`` [B];
        ``key_mask`` [B, L + 1] marks the valid cached positions and the new one; ``cache`` is
        ``reserved_cache``'s, prefilled by the transformers forward (L positions), or any cache
        whose layers ``append`` a step's keys and values (strop.engine's slots)."""
        b, n_kv, hd, dtype = len(ids), self.kv_heads, self.head_dim, self.dtype
        group = self.heads // n_kv
        h = self.lm.model.embed_tokens(ids)  # [B, d], the residual stream's dtype
        cos, sin = self.lm.model.rotary_emb(h[:, None], positions[:, None])
        mask = key_mask.bool()[:, None, None, :]  # [B, 1, 1, L + 1]
        for layer, kv in zip(self.layers, cache.layers, strict=True):
            x = _rms_norm(layer.attn_norm, h).to(dtype)
            q, k, v = layer.qkv(x).split([self.heads * hd, n_kv * hd, n_kv * hd], -1)
            q = q.view(b, 1, self.heads, hd).transpose(1, 2)
            k = k.view(b, 1, n_kv, hd).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            keys, values = kv.append(k[:, :, 0], v.view(b, n_kv, hd), dtype)
            # the G query heads of each key/value head as G query positions: [B, KV, G, hd]
            out = F.scaled_dot_product_attention(
                q.reshape(b, n_kv, group, hd).to(dtype),
                keys,
                values,
                attn_mask=mask,
                scale=self.scaling,
            )
            h = h + layer.o(out.reshape(b, self.heads * hd))
            x = _rms_norm(layer.mlp_norm, h).to(dtype)
            gate, up = layer.gate_up(x).chunk(2, -1)
            h = h + layer.down(layer.act(gate) * up)
        x = _rms_norm(self.lm.model.norm, h).to(dtype)
        return self.head(x).float()


def decode_plan(
    model: nn.Module,
    cache,
    dtype: torch.dtype,
    fold_adapters: bool = False,
    fp16_weights: bool = False,
) -> DecodePlan | None:
    """A DecodePlan for ``model`` computing in ``dtype`` (the autocast dtype, or the model's),
    or None when the model is anything the lean step does not reproduce exactly.
    ``fold_adapters`` (inference, not RL): LoRA folded into the plan's weight copies; logits
    then differ from the adapter's forward by round-off only (tests/unit/test_engine.py).
    ``fp16_weights`` (inference, where ``fp16_weights_available``): every projection and the
    LM head computed from fp16 copies of their weights (docs/performance.md "Generation")."""

    if active_config(model) is not None:  # virtual tokens: peft's own forward
        return None
    lm = causal_lm_of(model)
    cfg = lm.config
    if (
        cfg.model_type not in FAMILIES
        or not getattr(cache, "reserved", False)  # sliding windows etc. kept the plain cache
        or getattr(cfg, "pretraining_tp", 1) != 1
        or has_logit_transform(lm)
        or type(lm.model.embed_tokens) is not nn.Embedding
        or any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    ):
        return None
    half = fp16_weights and fp16_weights_available(next(model.parameters()).device, dtype)
    layers = []
    for layer in lm.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return None
        parts = (
            _projection([attn.q_proj, attn.k_proj, attn.v_proj], dtype, fold_adapters, half),
            _projection([attn.o_proj], dtype, fold_adapters, half),
            _projection([mlp.gate_proj, mlp.up_proj], dtype, fold_adapters, half),
            _projection([mlp.down_proj], dtype, fold_adapters, half),
        )
        if any(p is None for p in parts):
            return None
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if not all(type(n).__name__.endswith("RMSNorm") for n in norms):
            return None
        layers.append(
            _Layer(norms[0], parts[0], parts[1], norms[1], parts[2], parts[3], mlp.act_fn)
        )
    head = _projection([lm.lm_head], dtype, fold_adapters, half)
    if head is None:
        return None
    return DecodePlan(lm, layers, head, dtype)
