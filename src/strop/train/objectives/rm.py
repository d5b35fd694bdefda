"""Reward model: a scalar value head on a causal LM, trained on preference pairs (stage rm).

Bradley-Terry (Bradley & Terry, 1952; Ouyang et al., 2022, eq. 1) with the optional margin
of Llama 2 (Touvron et al., 2023, eq. 2) and the centering regulariser of Eisenstein et al.,
2023 (keeps rewards near zero so they are comparable across prompts). With r = r(x, y) the
head's output at the last token of the conversation (shapes [P], one entry per pair):

    L = -log s( r(x, y_w) - r(x, y_l) - m(x) ) + c * (r(x, y_w) + r(x, y_l))^2

The model is transformers' ...ForSequenceClassification with one label, so a saved reward
model (or its LoRA adapter, the head saved beside it) loads with standard tools; strop scores
conversations with ``strop.reward.score``. Limit: equal rewards and no margin give ln 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from strop.train.objectives.causal_lm import causal_lm_of
from strop.train.objectives.sequence import SequenceObjective, decoder_hidden, n_rows_of


def bradley_terry_loss(
    r_w: torch.Tensor, r_l: torch.Tensor, margin: torch.Tensor | float = 0.0, center: float = 0.0
) -> torch.Tensor:
    return -F.logsigmoid(r_w - r_l - margin) + center * (r_w + r_l) ** 2


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


class RewardObjective(SequenceObjective):
    model_head = "reward"

    def __init__(self, model, cfg):
        super().__init__(model, cfg, cfg.rm)
        head = causal_lm_of(model).score
        if not any(p.requires_grad for p in head.parameters()):  # freeze/bitfit: head trains
            head.requires_grad_(True)

    def row_scores(self, batch: dict) -> torch.Tensor:
        return last_token_rewards(self.model, batch)[: 2 * n_rows_of(batch)].view(-1, 2)

    def compute(self, rewards, ref, counts, values):
        s = self.section
        margin = values["margin"].to(rewards.dtype) if s.use_margin else 0.0
        losses = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin, s.center_weight)
        return losses, {
            "accuracy": (rewards[:, 0] > rewards[:, 1]).to(rewards.dtype),
            "margin": rewards[:, 0] - rewards[:, 1],
            "rewards/chosen": rewards[:, 0],
            "rewards/rejected": rewards[:, 1],
        }
