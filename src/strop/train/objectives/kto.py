"""KTO: Kahneman-Tversky optimisation on unpaired, labelled completions (stage kto).

Ethayarajh et al., 2024, eq. 8. With r(x,y) = log pi(y|x) - log pi_ref(y|x) and the
reference point z0 = KL(pi || pi_ref), estimated as the paper does from *mismatched* pairs
(prompt x_i with the completion y_j of another example; strop.data.pairs builds them), averaged
over the micro-batch, clipped at 0 and not back-propagated:

    v(x,y) = w_D * s(b (r - z0))   if y is desirable
             w_U * s(b (z0 - r))   if y is undesirable
    L = w(y) - v(x,y)           (w(y) the class weight: the loss is w * (1 - s(...)))

Shapes: every tensor [P], one entry per example. Limit: with pi = pi_ref, r = z0 = 0 and the
loss is w/2 for every example.
"""

from __future__ import annotations

import torch

from strop.train.objectives.sequence import SequenceObjective


def kl_reference_point(kl_policy: torch.Tensor, kl_ref: torch.Tensor) -> torch.Tensor:
    """z0: mean over the batch of the mismatched log-ratios, clipped at 0, detached."""
    return (kl_policy - kl_ref).mean().clamp(min=0).detach()


def kto_loss(
    policy: torch.Tensor,
    ref: torch.Tensor,
    z0: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    w_desirable: float = 1.0,
    w_undesirable: float = 1.0,
) -> torch.Tensor:
    r = policy - ref
    good = w_desirable * (1 - torch.sigmoid(beta * (r - z0)))
    bad = w_undesirable * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable, good, bad)


class KTOObjective(SequenceObjective):
    needs_reference = True

    def __init__(self, model, cfg):
        super().__init__(model, cfg, cfg.kto)

    def compute(self, logps, ref, counts, values):
        s = self.section
        desirable = values["label"] > 0.5
        z0 = kl_reference_point(logps[:, 1], ref[:, 1])
        losses = kto_loss(
            logps[:, 0], ref[:, 0], z0, desirable, s.beta, s.desirable_weight, s.undesirable_weight
        )
        rewards = s.beta * (logps[:, 0] - ref[:, 0])
        d = desirable.to(rewards.dtype)
        return losses, {  # "k#n": the denominator of k (the loop averages k over it)
            "kl": z0.expand_as(rewards),
            "rewards/desirable": rewards * d,
            "rewards/desirable#n": d,
            "rewards/undesirable": rewards * (1 - d),
            "rewards/undesirable#n": 1 - d,
            "desirable": d,
            "logps/completion": logps[:, 0],
        }
