"""Next-token cross-entropy on target tokens (stages pt and sft).

    L = -(1/N) * sum_{t in targets} log p_theta(x_t | x_<t)

where N is the number of target tokens in the whole optimizer step across all micro-batches
and ranks: the loop divides the returned *sum* by that global count, so gradient accumulation
and ragged lengths give exactly the loss of one big batch.
"""

from __future__ import annotations

import torch
from torch import nn

from strop.config.schema import Config
from strop.data.batching import collate
from strop.data.render import IGNORE
from strop.models.logps import target_nll_sum
from strop.train.objectives.base import Objective


class CausalLMObjective(Objective):
    perplexity = True  # the eval loss is a per-token cross-entropy

    def __init__(self, model: nn.Module, loss_chunk: int = 1024, share_prefix: bool = False):
        super().__init__(model)
        self.loss_chunk = loss_chunk
        self.share_prefix = share_prefix

    @classmethod
    def from_config(cls, model: nn.Module, cfg: Config) -> CausalLMObjective:
        return cls(model, cfg.train.loss_chunk, cfg.shares_prefixes)

    def collate(self, rows, pad_id: int, doc_attention: bool) -> dict:
        return collate(rows, pad_id, doc_attention, share_prefix=self.share_prefix)

    def units(self, batch: dict) -> torch.Tensor:
        """The loss is normalised by target tokens (across micro-batches and ranks)."""
        return (batch["labels"][:, 1:] != IGNORE).sum()

    def forward(self, **batch) -> dict:
        # The decoder alone, then the LM head at target positions only (no full-vocabulary
        # logits); prompt-learning adapters add their virtual tokens per document there.
        loss_sum, n = target_nll_sum(self.model, batch, self.loss_chunk)
        return {"loss_sum": loss_sum, "n_targets": n, "units": n, "metrics": {}}
