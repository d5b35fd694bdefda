"""Direct Preference Optimization and its family (stage dpo).

With policy pi, reference pi_ref, prompt x, chosen y_w, rejected y_l and sequence log-probs
summed over response tokens, the implicit reward margin (Rafailov et al., 2023) is

    z = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]

and each variant is a loss on z (shapes: every tensor [P], one entry per pair):

    sigmoid  (DPO)             -log s(b z)
    sigmoid + label_smoothing  -(1-e) log s(b z) - e log s(-b z)        (cDPO, Mitchell 2023)
    robust                     [-(1-e) log s(b z) + e log s(-b z)] / (1 - 2e)
                                                         (Chowdhury et al., 2024: unbiased
                                                          under preference-label noise e)
    ipo                        (z - 1/(2b))^2              (Azar et al., 2023, IPO eq. 17)
    ipo_mean                   the same on z of per-token mean log-probs (TRL's IPO: the
                               same beta then weighs a much smaller margin)
    hinge                      max(0, 1 - b z)             (SLiC-HF, Zhao et al., 2023)

with s the logistic sigmoid. ``nll_weight`` adds an SFT term on the chosen response (RPO,
Pang et al., 2024): + w * (-log pi(y_w|x) / |y_w|).
At step 0 with pi = pi_ref, z = 0 and the sigmoid loss is ln 2 exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from strop.train.objectives.sequence import SequenceObjective


def dpo_margin(policy_w, policy_l, ref_w, ref_l) -> torch.Tensor:
    return (policy_w - ref_w) - (policy_l - ref_l)


def sigmoid_loss(z: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(beta * z) - eps * F.logsigmoid(-beta * z)


def robust_loss(z: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    return (-(1 - eps) * F.logsigmoid(beta * z) + eps * F.logsigmoid(-beta * z)) / (1 - 2 * eps)


def ipo_loss(z: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    return (z - 1 / (2 * beta)) ** 2


def hinge_loss(z: torch.Tensor, beta: float, eps: float = 0.0) -> torch.Tensor:
    return torch.relu(1 - beta * z)


DPO_LOSSES = {
    "sigmoid": sigmoid_loss,
    "robust": robust_loss,
    "ipo": ipo_loss,
    "ipo_mean": ipo_loss,
    "hinge": hinge_loss,
}
# Losses whose margin uses log-probs averaged over each response's tokens, not summed.
PER_TOKEN_MARGIN = {"ipo_mean"}


def reward_metrics(policy: torch.Tensor, ref: torch.Tensor | None, beta: float) -> dict:
    """Implicit rewards b * (log pi - log pi_ref) per pair [P] (ref None: b * log pi)."""
    rewards = beta * (policy - ref if ref is not None else policy)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margin": chosen - rejected,
        "rewards/accuracy": (chosen > rejected).to(chosen.dtype),
        "logps/chosen": policy[:, 0],
        "logps/rejected": policy[:, 1],
    }


class DPOObjective(SequenceObjective):
    needs_reference = True

    def __init__(self, model, cfg):
        super().__init__(model, cfg, cfg.dpo)

    def compute(self, logps, ref, counts, values):
        s = self.section
        if s.loss in PER_TOKEN_MARGIN:
            z = dpo_margin(*(logps / counts).unbind(1), *(ref / counts).unbind(1))
        else:
            z = dpo_margin(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1])
        losses = DPO_LOSSES[s.loss](z, s.beta, s.label_smoothing)
        if s.nll_weight:
            losses = losses + s.nll_weight * (-logps[:, 0] / counts[:, 0])
        return losses, reward_metrics(logps, ref, s.beta)
