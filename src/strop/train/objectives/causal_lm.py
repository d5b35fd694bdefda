"""Next-token cross-entropy on target tokens (stages pt and sft).

    L = -(1/N) * sum_{t in targets} log p_theta(x_t | x_<t)

where N is the number of target tokens in the whole optimizer step across all micro-batches
and ranks: the loop divides the returned *sum* by that global count, so gradient accumulation
and ragged lengths give exactly the loss of one big batch.
"""

from __future__ import annotations

import torch
from torch import nn

from strop.data.batching import collate
from strop.data.render import IGNORE
from strop.models.prompt_learning import decoder_hidden
from strop.train.lm_loss import linear_cross_entropy_sum


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside a PEFT wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class CausalLMObjective(nn.Module):
    """Wraps the model so DDP/FSDP wrap one module whose forward returns the loss sum."""

    def __init__(self, model: nn.Module, loss_chunk: int = 1024, share_prefix: bool = False):
        super().__init__()
        self.model = model
        self.loss_chunk = loss_chunk
        self.share_prefix = share_prefix

    perplexity = True  # the eval loss is a per-token cross-entropy

    def collate(self, rows, pad_id: int, doc_attention: bool) -> dict:
        return collate(rows, pad_id, doc_attention, share_prefix=self.share_prefix)

    def units(self, batch: dict) -> torch.Tensor:
        """The loss is normalised by target tokens (across micro-batches and ranks)."""
        return (batch["labels"][:, 1:] != IGNORE).sum()

    def forward(
        self,
        input_ids,
        labels,
        attention_mask=None,
        position_ids=None,
        strop_doc_lens=None,
        strop_shared_prefix=None,
    ) -> dict:
        lm = causal_lm_of(self.model)
        # The decoder alone (no full-vocabulary logits); prompt-learning adapters add their
        # virtual tokens per document there (strop.models.prompt_learning).
        hidden = decoder_hidden(
            self.model, input_ids, attention_mask, position_ids, strop_doc_lens, strop_shared_prefix
        )  # [B, T, d]
        # Position t predicts token t+1; only positions whose next token is a target matter.
        targets = labels[:, 1:]
        keep = targets != IGNORE
        h = hidden[:, :-1][keep]  # [N, d]
        y = targets[keep]  # [N]
        head = lm.get_output_embeddings()
        if isinstance(head, nn.Linear) and head.bias is None and not _has_logit_transform(lm):
            loss_sum = linear_cross_entropy_sum(h, head.weight, y, self.loss_chunk)
        else:  # e.g. a PEFT-wrapped head or a soft-capped model: chunked, through the module
            loss_sum = sum(
                (
                    nn.functional.cross_entropy(
                        head(h[s : s + self.loss_chunk]).float(),
                        y[s : s + self.loss_chunk],
                        reduction="sum",
                    )
                    for s in range(0, len(y), self.loss_chunk)
                ),
                start=hidden.new_zeros((), dtype=torch.float32),
            )
        n = keep.sum()
        return {"loss_sum": loss_sum, "n_targets": n, "units": n, "metrics": {}}


def _has_logit_transform(lm: nn.Module) -> bool:
    cfg = lm.config
    return bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))
