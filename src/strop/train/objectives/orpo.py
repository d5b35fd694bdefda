"""ORPO: odds-ratio preference optimisation, no reference model (stage orpo).

Hong et al., 2024, eqs. 6-7. With the average token log-likelihood a(y) = log P(y|x) / |y|
(the paper's P is the length-normalised likelihood, P = exp a) and odds(y) = P / (1 - P):

    log odds(y) = a(y) - log(1 - exp a(y))
    L = -a(y_w) - lambda * log s( log odds(y_w) - log odds(y_l) )

the first term being the SFT (NLL) loss on the chosen response. Shapes: [P] per pair.
Limit: with a(y_w) = a(y_l) the odds term is lambda * ln 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from strop.train.objectives.dpo import reward_metrics
from strop.train.objectives.sequence import SequenceObjective


def log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
    # log(1 - exp(a)) computed as log(-expm1(a)): exact for a near 0 (P near 1).
    return avg_logp - torch.log(-torch.expm1(avg_logp))


def orpo_loss(avg_w: torch.Tensor, avg_l: torch.Tensor, lam: float) -> torch.Tensor:
    ratio = log_odds(avg_w) - log_odds(avg_l)
    return -avg_w - lam * F.logsigmoid(ratio)


class ORPOObjective(SequenceObjective):
    def __init__(self, model, cfg):
        super().__init__(model, cfg, cfg.orpo)

    def compute(self, logps, ref, counts, values):
        avg = logps / counts  # [P, 2]
        lam = self.section.beta
        losses = orpo_loss(avg[:, 0], avg[:, 1], lam)
        metrics = reward_metrics(avg, None, lam)
        metrics["log_odds_ratio"] = log_odds(avg[:, 0]) - log_odds(avg[:, 1])
        metrics["nll"] = -avg[:, 0]
        return losses, metrics
