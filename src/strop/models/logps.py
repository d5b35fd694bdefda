"""The one log-prob path: decoder hidden states, then the LM head at target positions only.

SFT's loss, the preference objectives' sequence scores, RL's sampled-token log-probs and
eval's perplexity all come through here, so a model with a wrapped head, soft-capped logits
or a prompt-learning adapter behaves the same in every stage. The head runs chunk by chunk
(strop.models.lm_loss): full-vocabulary logits never exist for more than ``chunk`` positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from strop.models import prompt_learning
from strop.models.lm_loss import linear_cross_entropy_sum, linear_token_logps

IGNORE = -100  # the label of a position that carries no loss (strop.data.render.IGNORE)


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def has_logit_transform(lm: nn.Module) -> bool:
    """Logits are not plain ``hidden @ head.T`` (Gemma's soft-capping, Cohere's logit scale)."""
    cfg = lm.config
    return bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))


def plain_head_weight(model: nn.Module) -> torch.Tensor | None:
    """The LM head's weight when logits are exactly ``hidden @ weight.T`` (no bias, no wrapper,
    no transform), so the fused chunked kernels apply; None otherwise."""
    lm = causal_lm_of(model)
    head = lm.get_output_embeddings()
    if isinstance(head, nn.Linear) and head.bias is None and not has_logit_transform(lm):
        return head.weight
    return None


def decoder_hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    """Last hidden states [B, T, d] of the causal LM inside ``model`` (PEFT-wrapped or not)
    for a collated batch, with a prompt-learning adapter's virtual tokens applied per document
    and a shared prefix (strop.data.batching) computed once."""
    decoder = causal_lm_of(model).get_decoder()
    doc_lens = batch.get("strop_doc_lens") or None
    shared = batch.get("strop_shared_prefix")
    virtual = prompt_learning.active_config(model)
    if virtual is not None:
        return prompt_learning.hidden_with_virtual_tokens(
            model,
            decoder,
            virtual,
            batch["input_ids"],
            batch.get("attention_mask"),
            batch.get("position_ids"),
            doc_lens,
            shared,
        )
    extra = {"strop_doc_lens": doc_lens} if doc_lens is not None else {}
    if shared is not None:
        extra["strop_shared_prefix"] = shared
    return decoder(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        **extra,
    ).last_hidden_state


def target_states(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [N, d] at the positions whose next token is a target, and those targets
    [N]: position t predicts token t+1."""
    hidden = decoder_hidden(model, batch)  # [B, T, d]
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    return hidden[:, :-1][keep], targets[keep]


def _through_head(model, h, chunk: int, per_chunk: Callable) -> list[torch.Tensor]:
    """``per_chunk(logits [n, V] fp32, start)`` over the head's logits, ``chunk`` rows at a time:
    the path for heads the fused kernels cannot take (a wrapped or soft-capped head)."""
    head = causal_lm_of(model).get_output_embeddings()
    return [per_chunk(head(h[s : s + chunk]).float(), s) for s in range(0, len(h), chunk)]


def target_nll_sum(model: nn.Module, batch: dict, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(target) over the batch's targets, their count): next-token
    cross-entropy (stages pt, sft; eval perplexity)."""
    h, y = target_states(model, batch)  # [N, d], [N]
    weight = plain_head_weight(model)
    if weight is not None:
        loss_sum = linear_cross_entropy_sum(h, weight, y, chunk)
    else:
        parts = _through_head(
            model,
            h,
            chunk,
            lambda z, s: nn.functional.cross_entropy(z, y[s : s + chunk], reduction="sum"),
        )
        loss_sum = sum(parts, start=h.new_zeros((), dtype=torch.float32))
    return loss_sum, torch.as_tensor(len(y), device=h.device)


def target_logps(
    model: nn.Module, batch: dict, chunk: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(logits / T)[target] at every target position [N], the hidden states there
    [N, d]). T = 1 scores the model itself (preference objectives, eval); RL scores the
    tempered distribution its completions were sampled from (T = 0, greedy, counts as 1)."""
    h, y = target_states(model, batch)
    t = temperature or 1.0
    weight = plain_head_weight(model)
    if weight is not None:
        return linear_token_logps(h, weight if t == 1.0 else weight / t, y, chunk), h
    parts = _through_head(
        model,
        h,
        chunk,
        lambda z, s: (z / t).log_softmax(-1).gather(1, y[s : s + chunk, None])[:, 0],
    )
    return (torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)), h


# -- documents: rows collated with_docs=True number their documents in strop_doc_index ------
def target_documents(batch: dict) -> torch.Tensor:
    """The document number of every target position [N], in target_states' order."""
    targets = batch["labels"][:, 1:]
    return batch["strop_doc_index"][:, 1:][targets != IGNORE]


def per_document(values: torch.Tensor, docs: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum ``values`` [N] by document into [n_rows, 2] (row r holds documents 2r and 2r+1)."""
    out = values.new_zeros(2 * n_rows)
    return out.index_add(0, docs, values).view(n_rows, 2)


def n_rows_of(batch: dict) -> int:
    return len(next(iter(batch["strop_values"].values())))


def row_token_counts(batch: dict) -> torch.Tensor:
    """Target tokens per document, [rows, 2]."""
    docs = target_documents(batch)
    return per_document(torch.ones_like(docs, dtype=torch.float64), docs, n_rows_of(batch))


def pair_logps(model: nn.Module, batch: dict, chunk: int, n_rows: int) -> torch.Tensor:
    """Summed target log-probs of each row's two documents, [n_rows, 2] (chosen, rejected)."""
    logps, _ = target_logps(model, batch, chunk)
    return per_document(logps, target_documents(batch), n_rows)


def last_token_rewards(model: nn.Module, batch: dict) -> torch.Tensor:
    """The value head at each document's last token: [documents] (fp32)."""
    hidden = decoder_hidden(model, batch)  # [B, T, d]
    docs = batch["strop_doc_index"].reshape(-1)  # [B*T]
    n_docs = int(docs.max()) + 1
    positions = torch.arange(docs.numel(), device=docs.device)
    real = docs >= 0
    last = torch.full((n_docs,), -1, dtype=torch.long, device=docs.device)
    last = last.scatter_reduce(0, docs[real], positions[real], reduce="amax")
    h = hidden.reshape(-1, hidden.shape[-1])[last]  # [D, d]
    return causal_lm_of(model).score(h).squeeze(-1).float()
