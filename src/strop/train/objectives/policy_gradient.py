"""PPO maths shared by the online RL stages (ppo, grpo): pure functions on tensors.

Shapes: ``[B, T]`` per completion token (B completions, T = longest completion, ``mask`` 1 on
real tokens, 0 on padding), ``[B]`` per completion.

Clipped surrogate (Schulman et al., 2017, PPO eq. 7), per token with the importance ratio
r_t = pi(o_t | .) / pi_old(o_t | .) and advantage A_t:

    L_clip = min(r_t A_t, clip(r_t, 1 - e_low, 1 + e_high) A_t)          (maximised)

(e_low != e_high is DAPO's "clip-higher", Yu et al., 2025.)

KL estimators (Schulman, "Approximating KL divergence", 2020) of KL(pi || pi_ref) from samples
of pi, with log-ratio l = log pi_ref - log pi per token:

    k1 = -l                 unbiased, high variance, can be negative
    k2 = l^2 / 2            biased, low variance
    k3 = (e^l - 1) - l      unbiased, low variance, always >= 0    (used by GRPO, eq. 4)

GAE (Schulman et al., 2016, eq. 16) with TD residual d_t = r_t + g V_{t+1} - V_t:

    A_t = sum_k (g l)^k d_{t+k},   returns R_t = A_t + V_t      (V past the last token = 0)

Clipped value loss (as in the PPO reference code): 0.5 max((V - R)^2, (V_old + clip(V - V_old,
-e_v, e_v) - R)^2). The adaptive KL controller is Ziegler et al., 2019, eq. 2.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp(min=1)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population variance); ``shift_mean=False``
    keeps the mean (rescales only), as one does for rewards."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    lr = ref_logp - logp
    return torch.expm1(lr) - lr


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token surrogate [B, T] to maximise, per-token "clip active" indicator [B, T]).
    ``advantages`` is [B, T] or [B] (broadcast over tokens)."""
    eps_high = eps_low if eps_high is None else eps_high
    adv = advantages if advantages.dim() == logp.dim() else advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    active = (clipped < unclipped).to(logp.dtype)  # the min picked the clipped term
    return torch.minimum(unclipped, clipped), active


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both [B, T]; tokens after a completion's end contribute nothing
    (``mask`` must be a prefix of ones per row)."""
    rewards, values = rewards * mask, values * mask
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        nxt = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv, (adv + values) * mask


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, eps: float
) -> torch.Tensor:
    """Per-token value loss [B, T] (mask and aggregate outside)."""
    clipped = old_values + (values - old_values).clamp(-eps, eps)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def shaped_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """KL reward shaping (Ziegler et al., 2019): r_t = -b kl_t on every token, plus the
    sequence score [B] on each completion's last token. [B, T]."""
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return rewards.index_put((torch.arange(len(scores)), last), scores, accumulate=True)


class AdaptiveKLController:
    """b <- b (1 + K clip((KL - target) / target, -0.2, 0.2) n / horizon) (Ziegler eq. 2,
    with n the steps since the last update over the horizon, as in their code; K = 1 there,
    the paper's text gives K = 0.1 per step)."""

    def __init__(self, beta: float, target: float, horizon: float, k_beta: float = 1.0):
        self.beta, self.target, self.horizon, self.k_beta = beta, target, horizon, k_beta

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.beta *= 1 + self.k_beta * error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]
