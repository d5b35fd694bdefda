"""Group Relative Policy Optimisation (stage grpo): the maths, then the objective.

GRPO (Shao et al., 2024, DeepSeekMath eq. 3) samples a group of G completions o_1..o_G per
prompt q from the old policy, scores them r_1..r_G, and uses the group-normalised reward as
the advantage of every token of o_i (outcome supervision, eq. in §4.1.2):

    A_i = (r_i - mean(r)) / (std(r) + eps)

std is the group's population std (divide by G), as the paper's normalisation reads; TRL
divides by G - 1 (the sample std, about 1.15x larger at G = 4): ``reward_std: sample``.

Per token, with r_t = pi(o_t) / pi_old(o_t) and the k3 KL estimator to the reference (eq. 4),

    l_{i,t} = -[ min(r_t A_i, clip(r_t, 1-e, 1+e_high) A_i) - b KL_k3(pi || pi_ref)_{i,t} ]

Aggregations over the completions of a batch (GRPO_AGGREGATIONS):

    sequence_mean  (1/G) sum_i (1/|o_i|) sum_t l_{i,t}          original GRPO (eq. 3)
    token_mean     sum_i sum_t l_{i,t} / sum_i |o_i|            DAPO (Yu et al., 2025, eq. 8)
    dr_grpo        (1/G) sum_i sum_t l_{i,t} / L_max            Dr. GRPO (Liu et al., 2025):
                                 no per-length 1/|o_i| bias; combine with scale_rewards=false
                                 to drop the std normalisation too (their second bias)

Each returns a *sum* and its unit count, so the loop's "sum over the step / global units"
gives exactly the aggregate of one big batch under accumulation and across ranks.

Anchor: with one iteration (pi = pi_old), b = 0 and sequence_mean, r_t = 1 and every
completion contributes its own A_i, whose group sum is 0: the loss is 0, but its gradient
(sum_i A_i mean_t grad log pi(o_{i,t})) is not.
"""

from __future__ import annotations

import time

import torch

from strop.data.batching import collate
from strop.data.render import IGNORE
from strop.rollout import RolloutRow, completion_logps, concat_rollouts, padded
from strop.train.objectives.online import OnlineRLObjective
from strop.train.objectives.policy_gradient import clipped_surrogate, kl_k3, masked_sum


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: bool = True,
    eps: float = 1e-4,
    std: str = "population",
) -> torch.Tensor:
    """rewards [N] (N = prompts x group_size, groups contiguous) -> advantages [N]; ``std``:
    population (divide by G) or sample (G - 1, TRL's)."""
    r = rewards.view(-1, group_size)  # [P, G]
    centred = r - r.mean(1, keepdim=True)
    if scale:
        centred = centred / (r.std(1, unbiased=std == "sample", keepdim=True) + eps)
    return centred.reshape(-1)


def zero_advantage_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[P] bool: groups whose rewards are all equal (no learning signal; DAPO's dynamic
    sampling drops them)."""
    r = rewards.view(-1, group_size)
    return (r == r[:, :1]).all(1)


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    beta: float,
    eps_low: float,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token loss l [B, T], clip-active [B, T], k3 KL [B, T]); advantages [B]."""
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    return -(surrogate - beta * kl), clipped, kl


def agg_sequence_mean(loss, mask, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = mask.sum(1)
    return (masked_sum(loss, mask, 1) / n.clamp(min=1)).sum(), (n > 0).sum()


def agg_token_mean(loss, mask, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    return masked_sum(loss, mask), mask.sum()


def agg_dr_grpo(loss, mask, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    return masked_sum(loss, mask) / max_len, (mask.sum(1) > 0).sum()


# name -> (per-token loss [B, T], mask [B, T], L_max) -> (loss sum, units)
GRPO_AGGREGATIONS = {
    "sequence_mean": agg_sequence_mean,
    "token_mean": agg_token_mean,
    "dr_grpo": agg_dr_grpo,
}


def grpo_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    beta,
    eps_low,
    eps_high=None,
    aggregation="sequence_mean",
    max_len=1,
) -> torch.Tensor:
    """The aggregated loss of one batch (what the loop computes over a whole step)."""
    loss, _, _ = grpo_token_loss(logp, old_logp, ref_logp, advantages, beta, eps_low, eps_high)
    total, units = GRPO_AGGREGATIONS[aggregation](loss, mask.to(loss.dtype), max_len)
    return total / units.clamp(min=1)


# ---- the objective ---------------------------------------------------------------------------
class GRPOObjective(OnlineRLObjective):
    """Samples groups through ``rollout`` (the loop's hook), then optimises the clipped
    surrogate on them for ``num_iterations`` optimizer steps."""

    def __init__(self, model, cfg):
        super().__init__(model, cfg, cfg.grpo, kl_weight=cfg.grpo.beta)

    # -- rollouts (called by the loop once per optimizer step) ---------------------------
    def rollout(self, take, step: int) -> list[RolloutRow]:
        s = self.section
        self._iteration = step % s.num_iterations
        if self._iteration and self._buffer:
            return self._buffer  # a further update on the same rollouts
        parts, rewards, each, zero, kept, reward_s = [], [], {}, [], [], 0.0
        n_groups = None
        rounds = 1 + (s.refill_rounds if s.dynamic_sampling else 0)
        for rnd in range(rounds):
            prompts = take()
            n_groups = n_groups or len(prompts)
            ro = self._sample(prompts, s.group_size, step + rnd * 1_000_000_007)
            t0 = time.perf_counter()
            r, e = self._score([p for p in prompts for _ in range(s.group_size)], ro)
            reward_s += time.perf_counter() - t0
            offset = len(rewards)
            rewards += r
            for k, v in e.items():
                each[k] = each.get(k, []) + v
            r = torch.tensor(r, dtype=torch.float64)
            adv = group_advantages(r, s.group_size, s.scale_rewards, std=s.reward_std).tolist()
            flat = zero_advantage_groups(r, s.group_size).tolist()
            zero += flat
            parts.append(ro)
            for g in range(len(prompts)):
                if not (s.dynamic_sampling and flat[g]):
                    kept.append(
                        [
                            (offset + g * s.group_size + j, adv[g * s.group_size + j])
                            for j in range(s.group_size)
                        ]
                    )
            if len(kept) >= n_groups:
                break
        ro = concat_rollouts(parts)
        # every group flat (and no refill found better): train on them (KL term only)
        kept = kept[:n_groups] or [
            [(g * s.group_size + j, 0.0) for j in range(s.group_size)] for g in range(n_groups)
        ]
        t1 = time.perf_counter()
        rows = [
            RolloutRow(p + c, [IGNORE] * len(p) + c, [len(p) + len(c)], {"adv": a}, lp)
            for group in kept
            for i, a in group
            for p, c, lp in [(ro.prompt_ids[i], ro.completion_ids[i], ro.logps[i])]
        ]
        if self.mode is not None:
            self._score_reference(rows)
        self.step_metrics = {
            **self.rollout_metrics(torch.tensor(rewards, dtype=torch.float64), each, ro),
            "zero_adv_groups": sum(zero) / len(zero),
            "time/reward": reward_s,
            "time/reference": time.perf_counter() - t1,
            **self.reward_stats.take(),  # reward/violations, reward/timeouts, reward/errors
        }
        if s.dynamic_sampling and s.refill_rounds:
            self.step_metrics["sampling_rounds"] = len(parts)
            self.step_metrics["groups_trained"] = len(kept)
        self._buffer = rows
        return rows

    # -- loop interface --------------------------------------------------------------------
    def collate(self, rows, pad_id: int, doc_attention: bool) -> dict:
        batch = collate(rows, pad_id, doc_attention, with_docs=True)
        batch["strop_old_logps"] = torch.tensor([x for r in rows for x in r.old_logps])
        if rows[0].ref_logps:
            batch["strop_ref_logps"] = torch.tensor([x for r in rows for x in r.ref_logps])
        return batch

    def units(self, batch: dict) -> torch.Tensor:
        if self.section.aggregation == "token_mean":
            return (batch["labels"][:, 1:] != IGNORE).sum()
        return torch.tensor(len(batch["strop_values"]["adv"]))

    def forward(self, **batch) -> dict:
        s = self.section
        logp = completion_logps(self.model, batch, self.loss_chunk, s.temperature)  # [N]
        docs = batch["strop_doc_index"][:, 1:][batch["labels"][:, 1:] != IGNORE]  # [N]
        adv = batch["strop_values"]["adv"].to(logp)  # [B]
        lp, mask = padded(logp, docs, len(adv))  # [B, T]
        # First iteration: pi_old = pi exactly (ratio 1); later ones: the sampler's log-probs.
        old = padded(
            logp.detach() if self._iteration == 0 else batch["strop_old_logps"], docs, len(adv)
        )[0]
        ref = batch.get("strop_ref_logps")
        ref = padded(ref.to(logp), docs, len(adv))[0] if ref is not None else None
        loss, clipped, kl = grpo_token_loss(lp, old, ref, adv, s.beta, s.epsilon, s.epsilon_high)
        total, units = GRPO_AGGREGATIONS[s.aggregation](loss, mask, s.max_new_tokens)
        n = mask.sum()
        return {
            "loss_sum": total,
            "units": units,
            "metrics": {  # "k#n": the denominator of k (per completion token)
                "kl": masked_sum(kl, mask),
                "kl#n": n,
                "clip_fraction": masked_sum(clipped, mask),
                "clip_fraction#n": n,
                "entropy": -masked_sum(lp.detach(), mask),
                "entropy#n": n,
            },
        }
