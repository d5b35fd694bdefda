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
    strop_shared_prefix: list[int] | None = None,
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
    shared = strop_shared_prefix or [0] * len(strop_doc_lens)
    return _per_document(query, key, value, strop_doc_lens, shared, groups, p, scaling)


def _after_prefix(docs, pk, pv, groups: int, p: float, scaling) -> list[torch.Tensor]:
    """Each document's (q, k, v) attends to all of the prefix keys/values ``pk``/``pv`` and
    causally to its own tokens: a [L, prefix + L] mask per document, never one over the row."""
    outs = []
    prefix = pk.shape[2]
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
    return outs


def _with_prefix(query, key, value, doc_lens, prefix: int, groups: int, p: float, scaling):
    """A KV-cache prefix of ``prefix`` positions (prefix tuning) before every row: each
    document sees all of it and its own tokens causally."""
    rows = []
    for b, lens in enumerate(doc_lens):
        pk, pv = key[b : b + 1, :, :prefix], value[b : b + 1, :, :prefix]
        docs = zip(
            query[b : b + 1].split(lens, dim=2),
            key[b : b + 1, :, prefix:].split(lens, dim=2),
            value[b : b + 1, :, prefix:].split(lens, dim=2),
            strict=True,
        )
        rows.append(torch.cat(_after_prefix(docs, pk, pv, groups, p, scaling), dim=2))
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def _per_document(query, key, value, doc_lens, shared, groups: int, p: float, scaling):
    """One causal kernel per document of each row. A row with ``shared[b]`` > 0 is laid out as
    [shared prefix][document suffixes] (strop.data.batching, share_prefix): the prefix, its
    first ``doc_lens`` entry, attends causally to itself and every later document to the whole
    prefix and causally to itself; their gradients meet in the one prefix computation, as they
    would in their own copies of it."""
    rows = []
    # split/cat rather than slicing into a preallocated output: their backward is one cat/split,
    # where slicing costs a zero-filled full-size gradient per document.
    for b, lens in enumerate(doc_lens):
        qs, ks, vs = (t[b : b + 1].split(lens, dim=2) for t in (query, key, value))
        if shared[b]:
            after = zip(qs[1:], ks[1:], vs[1:], strict=True)
            outs = [_causal(qs[0], ks[0], vs[0], groups, p, scaling)]
            outs += _after_prefix(after, ks[0], vs[0], groups, p, scaling)
        else:
            outs = [_causal(*d, groups, p, scaling) for d in zip(qs, ks, vs, strict=True)]
        rows.append(torch.cat(outs, dim=2))
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None  # [B, T, H, D] as the sdpa path returns


def _causal(q, k, v, groups: int, p: float, scaling) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        q, _repeat_kv(k, groups), _repeat_kv(v, groups), dropout_p=p, is_causal=True, scale=scaling
    )


def register() -> str:
    """Make ``strop_docs`` a valid attn_implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, doc_causal_attention)
    # Padding masks for generation/eval are built exactly as for sdpa.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
