"""SimPO: reference-free, length-normalised preference optimisation (stage simpo).

Meng et al., 2024, eq. 6, with average log-probs per response token
a(y) = log pi(y|x) / |y| (shapes [P], one entry per pair):

    L = -log s( b * a(y_w) - b * a(y_l) - gamma )

with optional label smoothing e as in cDPO: -(1-e) log s(u) - e log s(-u), u the argument
above. Limits: with a(y_w) = a(y_l) the loss is -log s(-gamma) = log(1 + e^gamma).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from strop.train.objectives.dpo import reward_metrics
from strop.train.objectives.sequence import SequenceObjective


def simpo_loss(
    avg_w: torch.Tensor, avg_l: torch.Tensor, beta: float, gamma: float, eps: float = 0.0
) -> torch.Tensor:
    u = beta * (avg_w - avg_l) - gamma
    return -(1 - eps) * F.logsigmoid(u) - eps * F.logsigmoid(-u)


class SimPOObjective(SequenceObjective):
    def __init__(self, model, cfg):
        super().__init__(model, cfg, cfg.simpo)

    def compute(self, logps, ref, counts, values):
        s = self.section
        avg = logps / counts  # [P, 2]
        losses = simpo_loss(avg[:, 0], avg[:, 1], s.beta, s.gamma, s.label_smoothing)
        metrics = reward_metrics(avg, None, s.beta)  # SimPO's reward: b * average log-prob
        return losses, metrics
