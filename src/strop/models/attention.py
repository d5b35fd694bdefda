"""Per-document causal attention for packed rows.

An explicit 4-D block-diagonal mask is correct but sends SDPA to its math path, which
materialises [heads, T, T] scores per layer (7 GB peak for two 1024-token rows of SmolLM2 in
fp32, docs/LOG.md). Here each document of a packed row runs its own ``is_causal`` SDPA call, so
the fused (flash) kernels apply on CPU and GPU and no mask exists at all.

Registered through transformers' public AttentionInterface under ``strop_docs``; it behaves
exactly like ``sdpa`` unless the forward call carries ``strop_doc_lens`` (a list per row of
document lengths, padding counted as one more document), so generation and evaluation with a
padding mask are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "strop_docs"


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def doc_causal_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, T, D]
    key: torch.Tensor,  # [B, Hkv, T, D]
    value: torch.Tensor,  # [B, Hkv, T, D]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    strop_doc_lens: list[list[int]] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if strop_doc_lens is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    p = dropout if module.training else 0.0
    prefix = key.shape[2] - query.shape[2]
    if prefix:  # a KV-cache prefix (prefix tuning) that every document of the row sees
        return _with_prefix(query, key, value, strop_doc_lens, prefix, groups, p, scaling)
    rows = []
    # split/cat rather than slicing into a preallocated output: their backward is one cat/split,
    # where slicing costs a zero-filled full-size gradient per document.
    for b, lens in enumerate(strop_doc_lens):
        docs = zip(
            query[b : b + 1].split(lens, dim=2),
            key[b : b + 1].split(lens, dim=2),
            value[b : b + 1].split(lens, dim=2),
            strict=True,
        )
        rows.append(
            torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q,
                        _repeat_kv(k, groups),
                        _repeat_kv(v, groups),
                        dropout_p=p,
                        is_causal=True,
                        scale=scaling,
                    )
                    for q, k, v in docs
                ],
                dim=2,
            )
        )
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None  # [B, T, H, D] as the sdpa path returns


def _with_prefix(query, key, value, doc_lens, prefix: int, groups: int, p: float, scaling):
    """Each document attends to the first ``prefix`` keys/values (all of them) and causally to
    its own tokens: a [L, prefix + L] mask per document, never one over the whole row."""
    rows = []
    for b, lens in enumerate(doc_lens):
        pk, pv = key[b : b + 1, :, :prefix], value[b : b + 1, :, :prefix]
        outs = []
        docs = zip(
            query[b : b + 1].split(lens, dim=2),
            key[b : b + 1, :, prefix:].split(lens, dim=2),
            value[b : b + 1, :, prefix:].split(lens, dim=2),
            strict=True,
        )
        for q, k, v in docs:
            n = q.shape[2]
            allowed = torch.ones(n, prefix + n, dtype=torch.bool, device=q.device)
            allowed[:, prefix:] = allowed[:, prefix:].tril()
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            outs.append(
                F.scaled_dot_product_attention(
                    q,
                    _repeat_kv(k, groups),
                    _repeat_kv(v, groups),
                    attn_mask=allowed,
                    dropout_p=p,
                    scale=scaling,
                )
            )
        rows.append(torch.cat(outs, dim=2))
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``strop_docs`` a valid attn_implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, doc_causal_attention)
    # Padding masks for generation/eval are built exactly as for sdpa.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
