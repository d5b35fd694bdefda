"""What the sequence-level objectives (dpo, simpo, orpo, kto) share.

Their rows hold two documents (chosen + rejected, or example + mismatched example; see
strop.data.pairs). One forward pass scores both with per-document attention; log-probs are
computed at target positions only, chunked through the LM head (strop.models.lm_loss), then
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
from strop.models.logps import n_rows_of, pair_logps, row_token_counts
from strop.train.objectives.base import Objective, Setting
from strop.train.objectives.reference import check_adapter_only, load_frozen_reference

REFERENCE_MODES = ("precompute", "model", "adapter_off")


class SequenceObjective(Objective):
    """Base of the pairwise objectives: collation, units, policy/reference log-probs.

    Subclasses implement ``compute(logps, ref, counts, values) -> (losses [P], metrics)``
    where every tensor has one entry per row and ``metrics`` maps names to per-row values.
    """

    needs_reference = False

    def __init__(self, model: nn.Module, cfg, section=None):
        super().__init__(model)
        self.loss_chunk = cfg.train.loss_chunk
        self.section = section
        self.mode = getattr(section, "reference", None) if self.needs_reference else None
        self._reference: list[nn.Module] = []  # a list: not a submodule, never trained/saved
        if self.mode == "adapter_off":
            check_adapter_only(model)

    def prepare(self, setting: Setting) -> None:
        """The reference, before any update: a frozen model loads, or the initial policy
        scores every row once (precompute)."""
        if self.mode == "model":
            cfg = setting.cfg
            self.set_reference_model(load_frozen_reference(self.section, cfg, setting.device))
            setting.log(f"reference: {self.section.reference_model or cfg.model.name}, frozen")
        elif self.mode == "precompute":
            for rows in setting.splits:
                self.precompute_reference(
                    rows, setting.pad_id, setting.doc_attention, setting.device, setting.autocast
                )
            setting.log(
                "reference: log-probs precomputed with the initial policy (no reference model kept)"
            )

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
        return pair_logps(self.model, batch, self.loss_chunk, n_rows_of(batch))

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
                return pair_logps(model, batch, self.loss_chunk, n_rows_of(batch))

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
                ref = pair_logps(self.model, batch, self.loss_chunk, len(part))
            ref = ref.double().cpu()  # as live: same sums
            for r, (a, b) in zip(part, ref.tolist(), strict=True):
                r.values["ref_0"], r.values["ref_1"] = a, b
        self.model.train(was_training)
