"""What the sequence-level objectives (dpo, simpo, orpo, kto) share.

Their rows hold two documents (chosen + rejected, or example + mismatched example; see
strop.data.pairs). One forward pass scores both with per-document attention; log-probs are
computed at target positions only, chunked through the LM head (strop.train.lm_loss), then
summed per document. The loop normalises by *units*: rows whose two documents both still
have targets (a pair, or a KTO example), so ``loss = sum over units / global unit count``.

References for the DPO family and KTO (``reference``):
- ``precompute``: before training, one pass of the initial policy (eval mode) stores each
  row's reference log-probs in ``Row.values``; no reference model stays in memory.
- ``model``: a separate frozen model (``reference_model``, default the policy's base).
- ``adapter_off``: the policy with its adapters disabled (adapter methods only).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from strop.data.batching import collate
from strop.data.render import IGNORE
from strop.errors import StropError
from strop.train.lm_loss import linear_token_logps
from strop.train.objectives.causal_lm import _has_logit_transform, causal_lm_of

REFERENCE_MODES = ("precompute", "model", "adapter_off")


def decoder_hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    """Last hidden states [B, T, d] of the causal LM inside ``model`` (PEFT-wrapped or not)."""
    from strop.models.prompt_learning import decoder_hidden as hidden_of  # virtual tokens too

    return hidden_of(
        model,
        batch["input_ids"],
        batch.get("attention_mask"),
        batch.get("position_ids"),
        batch.get("strop_doc_lens") or None,
    )


def target_logps(model: nn.Module, batch: dict, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) at every target position [N] and each position's document number [N]."""
    lm = causal_lm_of(model)
    hidden = decoder_hidden(model, batch)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    h, y = hidden[:, :-1][keep], targets[keep]  # [N, d], [N]
    docs = batch["strop_doc_index"][:, 1:][keep]  # [N]
    head = lm.get_output_embeddings()
    if isinstance(head, nn.Linear) and head.bias is None and not _has_logit_transform(lm):
        return linear_token_logps(h, head.weight, y, chunk), docs
    parts = [  # a wrapped or soft-capped head: through the module, chunk by chunk
        head(h[s : s + chunk]).float().log_softmax(-1).gather(1, y[s : s + chunk, None])[:, 0]
        for s in range(0, len(y), chunk)
    ]
    return (torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)), docs


def per_document(values: torch.Tensor, docs: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum ``values`` [N] by document into [n_rows, 2] (row r holds documents 2r and 2r+1)."""
    out = values.new_zeros(2 * n_rows)
    return out.index_add(0, docs, values).view(n_rows, 2)


def n_rows_of(batch: dict) -> int:
    return len(next(iter(batch["strop_values"].values())))


def row_token_counts(batch: dict) -> torch.Tensor:
    """Target tokens per document, [rows, 2]."""
    targets = batch["labels"][:, 1:]
    docs = batch["strop_doc_index"][:, 1:][targets != IGNORE]
    ones = torch.ones_like(docs, dtype=torch.float64)
    return per_document(ones, docs, n_rows_of(batch))


class SequenceObjective(nn.Module):
    """Base of the pairwise objectives: collation, units, policy/reference log-probs.

    Subclasses implement ``compute(logps, ref, counts, values) -> (losses [P], metrics)``
    where every tensor has one entry per row and ``metrics`` maps names to per-row values.
    """

    needs_reference = False

    def __init__(self, model: nn.Module, cfg, section=None):
        super().__init__()
        self.model = model
        self.loss_chunk = cfg.train.loss_chunk
        self.section = section
        self.mode = getattr(section, "reference", None) if self.needs_reference else None
        self._reference: list[nn.Module] = []  # a list: not a submodule, never trained/saved
        if self.mode == "adapter_off":
            _check_adapter_only(model)

    def load_reference_model(self, cfg, device) -> None:
        """reference: model: ``reference_model`` (default the policy's base), frozen."""
        from strop.hub import resolve_model
        from strop.models.load import load_model, load_tokenizer

        name = self.section.reference_model or cfg.model.name
        reference, ref_tok, _ = load_model(name, cfg.model.dtype, attn=cfg.model.attn)
        if ref_tok.get_vocab() != load_tokenizer(resolve_model(cfg.model.name)).get_vocab():
            # another vocabulary: its log-probs of the policy's token ids would mean nothing
            raise StropError(
                f"reference_model: {name} has another tokenizer than model.name "
                f"{cfg.model.name}; the reference must share the policy's tokenizer"
            )
        self.set_reference_model(reference.to(device))

    def set_reference_model(self, reference: nn.Module) -> None:
        reference.eval().requires_grad_(False)
        self._reference = [reference]

    # -- loop interface ---------------------------------------------------------------
    def collate(self, rows, pad_id: int, doc_attention: bool) -> dict:
        return collate(rows, pad_id, doc_attention, with_docs=True)

    def units(self, batch: dict) -> torch.Tensor:
        return (row_token_counts(batch) > 0).all(1).sum()

    def row_scores(self, batch: dict) -> torch.Tensor:
        """What the loss compares, per document [P, 2]: summed response log-probs."""
        logps, docs = target_logps(self.model, batch, self.loss_chunk)
        return per_document(logps, docs, n_rows_of(batch))

    def forward(self, **batch) -> dict:
        logps = self.row_scores(batch)  # [P, 2]
        counts = row_token_counts(batch).to(logps.dtype)  # [P, 2]
        valid = (counts > 0).all(1)
        ref = self.reference_logps(batch).to(logps.dtype) if self.needs_reference else None
        values = {k: v.to(logps.device) for k, v in batch["strop_values"].items()}
        losses, metrics = self.compute(logps, ref, counts.clamp(min=1), values)
        zero = losses.new_zeros(())
        return {
            "loss_sum": torch.where(valid, losses, zero).sum(),
            "units": valid.sum(),
            "metrics": {k: torch.where(valid, v.detach(), zero).sum() for k, v in metrics.items()},
        }

    # -- references -------------------------------------------------------------------
    def reference_logps(self, batch: dict) -> torch.Tensor:
        """Reference log-probs [P, 2] for the batch's rows, by ``reference`` mode."""
        if self.mode == "precompute":
            v = batch["strop_values"]
            if "ref_0" not in v:
                raise RuntimeError("reference log-probs were not precomputed for these rows")
            return torch.stack([v["ref_0"], v["ref_1"]], 1).to(batch["input_ids"].device)
        with torch.no_grad():
            if self.mode == "model":
                model, ctx = self._reference[0], contextlib.nullcontext()
            else:  # adapter_off
                model, ctx = self.model, self.model.disable_adapter()
            with ctx:
                logps, docs = target_logps(model, batch, self.loss_chunk)
            return per_document(logps, docs, n_rows_of(batch))

    @torch.no_grad()
    def precompute_reference(self, rows, pad_id: int, doc_attention: bool, device, autocast):
        """Store each row's reference log-probs as values ref_0/ref_1 (mode precompute): the
        initial policy, before any update, in eval mode (no dropout)."""
        if self.mode != "precompute":
            return
        was_training = self.model.training
        self.model.eval()
        for s in range(0, len(rows), 8):
            part = rows[s : s + 8]
            batch = self.collate(part, pad_id, doc_attention)
            batch = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            with autocast():
                logps, docs = target_logps(self.model, batch, self.loss_chunk)
            ref = per_document(logps, docs, len(part)).double().cpu()  # as live: same sums
            for r, (a, b) in zip(part, ref.tolist(), strict=True):
                r.values["ref_0"], r.values["ref_1"] = a, b
        self.model.train(was_training)


def _check_adapter_only(model: nn.Module) -> None:
    """adapter_off is the reference only if nothing but adapter weights trains."""
    if not hasattr(model, "disable_adapter"):
        raise StropError(
            "reference: adapter_off needs an adapter method (lora, dora, ia3, qlora); "
            "use reference: precompute or model"
        )
    others = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not any(k in n for k in ("lora_", "ia3_", "modules_to_save"))
    ]
    saved = [n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    if others or saved:
        name = (others or saved)[0]
        raise StropError(
            f"reference: adapter_off would be wrong: {name} trains outside the adapter, so the "
            "model with adapters disabled is not the initial model; use reference: precompute"
        )
