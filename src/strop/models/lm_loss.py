"""Cross-entropy through the LM head at target positions only, chunked, never materialising
full-vocabulary logits for more than ``chunk`` positions at a time.

The backward of softmax cross-entropy is known in closed form, (softmax(z) - onehot(y)), so
the gradients w.r.t. hidden states and head weight are computed chunk by chunk during the
forward pass and returned in backward: no logits are stored for backward and none are
recomputed (the idea behind "fused linear cross-entropy" kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _chunked_ce(hidden, weight, targets, chunk: int, need_h: bool, need_w: bool):
    # hidden: [N, d] (target positions only), weight: [V, d], targets: [N]
    w = weight.to(hidden.dtype)
    acc = torch.promote_types(hidden.dtype, torch.float32)  # softmax never in half precision
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    for s in range(0, hidden.shape[0], chunk):
        h, y = hidden[s : s + chunk], targets[s : s + chunk]
        logits = (h @ w.T).to(acc)  # [n, V]
        lse = torch.logsumexp(logits, dim=-1)
        loss += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
        if need_h or need_w:
            grad = torch.exp(logits - lse[:, None])  # d loss / d logits = softmax - onehot
            grad[torch.arange(len(y), device=y.device), y] -= 1.0
            if need_h:
                grad_h[s : s + chunk] = grad.to(h.dtype) @ w
            if need_w:
                grad_w += grad.T @ h.to(acc)
    return loss, grad_h, grad_w


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, grad_h, grad_w = _chunked_ce(hidden, weight, targets, chunk, need_h, need_w)
        ctx.grads = (grad_h, grad_w)  # plain tensors, not graph inputs: no saved-tensor hooks
        ctx.w_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.w_dtype) if grad_w is not None else None
        return gh, gw, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Sum over N positions of -log softmax(hidden @ weight.T)[target]. hidden [N, d], weight
    [V, d], targets [N]. Gradients flow to hidden and weight (where they require grad)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _FusedLinearCE.apply(hidden, weight, targets, chunk)
    return _chunked_ce(hidden, weight, targets, chunk, False, False)[0]


def reference_cross_entropy_sum(hidden, weight, targets) -> torch.Tensor:
    """The plain definition (full logits, F.cross_entropy): the parity reference in tests."""
    return F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")


def _chunk_logits(h, w, acc):
    return (h @ w.T).to(acc)


class _LinearTokenLogps(torch.autograd.Function):
    """Per-position log p(target), chunked. Unlike the summed CE above, the gradient per
    position (from a sequence-level loss such as DPO's) is known only in backward, so the
    backward recomputes each chunk's logits: one extra head matmul, no logits kept."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        acc = torch.promote_types(hidden.dtype, torch.float32)
        w = weight.to(hidden.dtype)
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            logits = _chunk_logits(hidden[s : s + chunk], w, acc)
            y = targets[s : s + chunk]
            out[s : s + chunk] = logits.gather(1, y[:, None]).squeeze(1) - logits.logsumexp(-1)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        w = weight.to(hidden.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, y = hidden[s : s + ctx.chunk], targets[s : s + ctx.chunk]
            logits = _chunk_logits(h, w, acc)
            # d logp_y / d logits = onehot(y) - softmax, scaled by the incoming gradient
            grad = -torch.softmax(logits, dim=-1)
            grad[torch.arange(len(y), device=y.device), y] += 1.0
            grad *= grad_out[s : s + ctx.chunk, None].to(acc)
            if need_h:
                grad_h[s : s + ctx.chunk] = grad.to(h.dtype) @ w
            if need_w:
                grad_w += grad.T @ h.to(acc)
        return grad_h, grad_w.to(weight.dtype) if need_w else None, None, None


def linear_token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[target] per position, [N], without ever holding more than
    ``chunk`` rows of full-vocabulary logits (forward or backward)."""
    return _LinearTokenLogps.apply(hidden, weight, targets, chunk)


def reference_token_logps(hidden, weight, targets) -> torch.Tensor:
    """The plain definition (full logits, log_softmax): the parity reference in tests."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
