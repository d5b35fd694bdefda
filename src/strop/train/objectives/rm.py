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

from strop.models.logps import causal_lm_of, last_token_rewards, n_rows_of
from strop.train.objectives.sequence import SequenceObjective


def bradley_terry_loss(
    r_w: torch.Tensor, r_l: torch.Tensor, margin: torch.Tensor | float = 0.0, center: float = 0.0
) -> torch.Tensor:
    return -F.logsigmoid(r_w - r_l - margin) + center * (r_w + r_l) ** 2


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
