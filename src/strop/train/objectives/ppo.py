"""Actor-critic RLHF with PPO (stage ppo), on the shared rollout engine.

Per optimizer step (or every ``num_iterations`` steps) the policy samples completions for a
batch of prompts, and for each completion o with tokens o_1..o_T:

1. a sequence score s: the weighted sum of the reward functions (a trained reward model is
   one of them), minus ``missing_eos_penalty`` if o was cut at max_new_tokens;
2. per-token rewards (InstructGPT / Ziegler et al., 2019): r_t = -b (log pi_old(o_t) -
   log pi_ref(o_t)) on every token (``kl_penalty: reward``; the k1 estimator, whose sum over
   o estimates KL(pi || pi_ref) of the completion), plus s on the last token;
3. values V_t from a value head (a linear layer on the policy's final hidden state before
   o_t, the critic sharing the policy's trunk) and GAE(gamma, lambda) advantages A_t and
   returns R_t = A_t + V_t; advantages whitened over the batch (option);
4. the loss per token: -min(rho_t A_t, clip(rho_t, 1 - e, 1 + e) A_t)
   + vf_coef * 0.5 max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -e_v, e_v) - R_t)^2)
   (+ b * k3 KL when ``kl_penalty: loss``), averaged over all completion tokens of the step.

The adaptive KL controller moves b towards a target KL per completion after every rollout.
All maths lives in objectives/policy_gradient.py (tested there against hand-derived values).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from strop.data.batching import collate
from strop.data.render import IGNORE
from strop.rollout import RolloutRow, completion_logps, padded
from strop.train.objectives.online import OnlineRLObjective
from strop.train.objectives.policy_gradient import (
    AdaptiveKLController,
    clipped_surrogate,
    clipped_value_loss,
    gae,
    kl_k3,
    masked_mean,
    masked_sum,
    shaped_rewards,
    whiten,
)


@dataclass
class PPORow(RolloutRow):
    """A rollout row with per-completion-token critic quantities from rollout time."""

    old_values: list[float] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)


def _pad_lists(lists: list[list[float]], width: int) -> torch.Tensor:
    out = torch.zeros(len(lists), width)
    for i, x in enumerate(lists):
        out[i, : len(x)] = torch.tensor(x)
    return out


def ppo_advantages(scores, old_logps, ref_logps, values, mask, s, beta: float):
    """Per-token (rewards, advantages, returns, k1 KL), all [B, T], from rollout-time tensors:
    ``scores`` [B], the rest [B, T] (``ref_logps`` None: no KL term)."""
    kl = (old_logps - ref_logps) * mask if ref_logps is not None else torch.zeros_like(mask)
    rewards = shaped_rewards(scores, kl, mask, beta if s.kl_penalty == "reward" else 0.0)
    if s.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    adv, ret = gae(rewards, values, mask, s.gamma, s.lam)
    if s.whiten_advantages:
        adv = whiten(adv, mask)
    return rewards, adv, ret, kl


def ppo_token_loss(logp, old_logp, advantages, values, old_values, returns, ref_logp, s, beta):
    """Per-token (loss [B, T], policy clip active, value clip active, k3 KL or None): the
    clipped surrogate, plus ``vf_coef`` x the clipped value loss, plus ``beta`` x k3 KL when
    ``kl_penalty: loss``. Mask and aggregate outside."""
    surrogate, clipped = clipped_surrogate(logp, old_logp, advantages, s.epsilon)
    loss = -surrogate + s.vf_coef * clipped_value_loss(values, old_values, returns, s.value_clip)
    kl = None
    if s.kl_penalty == "loss" and ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        loss = loss + beta * kl
    v_clipped = ((values - old_values).abs() > s.value_clip).to(logp.dtype)
    return loss, clipped, v_clipped, kl


class PPOObjective(OnlineRLObjective):
    row_type = PPORow

    def __init__(self, model: nn.Module, cfg):
        s = cfg.ppo
        super().__init__(model, cfg, s, kl_weight=s.kl_coef)
        hidden = model.config.hidden_size
        # Zero-initialised: V = 0 at the start, so the first advantages are the returns and
        # the value loss's gradient reaches the trunk only once the head has learnt something.
        self.value_head = nn.Linear(hidden, 1, device=self._device())
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.beta = s.kl_coef
        self.kl_ctl = (
            AdaptiveKLController(s.kl_coef, s.kl_target, s.kl_horizon) if s.adaptive_kl else None
        )

    # -- rollouts (called by the loop once per optimizer step) ---------------------------
    def rollout(self, take, step: int) -> list[PPORow]:
        s = self.section
        self._iteration = step % s.num_iterations
        if self._iteration and self._buffer:
            return self._buffer  # a further update on the same rollouts
        prompts = take()
        ro = self._sample(prompts, s.samples_per_prompt, step)
        t0 = time.perf_counter()
        raw, each = self._score([p for p in prompts for _ in range(s.samples_per_prompt)], ro)
        t1 = time.perf_counter()
        reward = torch.tensor(raw)
        scores = reward - s.missing_eos_penalty * (~torch.tensor(ro.finished)).float()
        rows = [
            PPORow(p + c, [IGNORE] * len(p) + c, [len(p) + len(c)], {"score": float(sc)}, lp)
            for p, c, lp, sc in zip(ro.prompt_ids, ro.completion_ids, ro.logps, scores, strict=True)
        ]
        if self.mode is not None:
            self._score_reference(rows)
        t2 = time.perf_counter()
        self._rollout_values(rows)
        width = max(len(r.old_logps) for r in rows)
        mask = _pad_lists([[1.0] * len(r.old_logps) for r in rows], width)
        old_lp = _pad_lists([r.old_logps for r in rows], width)
        ref_lp = _pad_lists([r.ref_logps for r in rows], width) if self.mode else None
        values = _pad_lists([r.old_values for r in rows], width)
        rewards, adv, ret, kl = ppo_advantages(scores, old_lp, ref_lp, values, mask, s, self.beta)
        for i, r in enumerate(rows):
            n = len(r.old_logps)
            r.advantages, r.returns = adv[i, :n].tolist(), ret[i, :n].tolist()
        kl_per_completion = kl.sum(1).mean().item()
        beta_used = self.beta
        if self.kl_ctl is not None:
            self.beta = self.kl_ctl.update(kl_per_completion, len(rows))
        self.step_metrics = {
            **self.rollout_metrics(reward, each, ro),
            "score": scores.mean().item(),
            "kl": kl_per_completion,
            "kl_coef": beta_used,
            "value_mean": masked_mean(values, mask).item(),
            "return_mean": masked_mean(ret, mask).item(),
            "explained_variance": _explained_variance(values, ret, mask),
            "time/reward": t1 - t0,
            "time/reference": t2 - t1,
            "time/values": time.perf_counter() - t2,
            **self.reward_stats.take(),  # reward/violations, reward/timeouts, reward/errors
        }
        self._buffer = rows
        return rows

    @torch.no_grad()
    def _rollout_values(self, rows: list[PPORow], per_batch: int = 16) -> None:
        for part, (_, h) in self._per_batch_logps(self.model, rows, per_batch, True):
            v = self.value_head(h).squeeze(-1).float()
            for r, x in zip(part, v.split([len(r.old_logps) for r in part]), strict=True):
                r.old_values = x.tolist()

    # -- loop interface --------------------------------------------------------------------
    def collate(self, rows, pad_id: int, doc_attention: bool) -> dict:
        batch = collate(rows, pad_id, doc_attention, with_docs=True)
        flat = lambda name: torch.tensor([x for r in rows for x in getattr(r, name)])  # noqa: E731
        for name in ("old_logps", "old_values", "advantages", "returns"):
            batch[f"strop_{name}"] = flat(name)
        if rows[0].ref_logps:
            batch["strop_ref_logps"] = flat("ref_logps")
        return batch

    def units(self, batch: dict) -> torch.Tensor:
        return (batch["labels"][:, 1:] != IGNORE).sum()  # completion tokens

    def forward(self, **batch) -> dict:
        s = self.section
        logp, h = completion_logps(self.model, batch, self.loss_chunk, s.temperature, True)
        v_flat = self.value_head(h if s.value_trunk_grad else h.detach()).squeeze(-1).float()
        docs = batch["strop_doc_index"][:, 1:][batch["labels"][:, 1:] != IGNORE]  # [N]
        n_rows = len(batch["strop_values"]["score"])
        pad = lambda x: padded(x.to(logp), docs, n_rows)[0]  # noqa: E731
        lp, mask = padded(logp, docs, n_rows)
        v = pad(v_flat)
        # First iteration: pi_old = pi exactly (ratio 1); later ones: the sampler's log-probs.
        old = lp.detach() if self._iteration == 0 else pad(batch["strop_old_logps"])
        old_v, adv, ret = (
            pad(batch[f"strop_{k}"]) for k in ("old_values", "advantages", "returns")
        )
        ref = pad(batch["strop_ref_logps"]) if "strop_ref_logps" in batch else None
        loss, clipped, v_clipped, kl = ppo_token_loss(
            lp, old, adv, v, old_v, ret, ref, s, self.beta
        )
        n = mask.sum()
        metrics = {
            "value_loss": masked_sum(
                clipped_value_loss(v, old_v, ret, s.value_clip).detach(), mask
            ),
            "clip_fraction": masked_sum(clipped, mask),
            "value_clip_fraction": masked_sum(v_clipped, mask),
            "entropy": -masked_sum(lp.detach(), mask),
        }
        if kl is not None:
            metrics["kl_k3"] = masked_sum(kl.detach(), mask)
        metrics.update({f"{k}#n": n for k in list(metrics)})  # all per completion token
        return {"loss_sum": masked_sum(loss, mask), "units": n, "metrics": metrics}

    def extra_artifacts(self) -> dict[str, str]:
        """The critic, saved beside final/ for inspection or warm starts."""
        return {"value_head.safetensors": "value_head."}

    # -- resume: the buffer and the adaptive KL coefficient ---------------------------------
    def rollout_state(self) -> dict:
        return {**super().rollout_state(), "kl_coef": self.beta}

    def load_rollout_state(self, state: dict) -> None:
        super().load_rollout_state(state)
        self.beta = state.get("kl_coef", self.beta)
        if self.kl_ctl is not None:
            self.kl_ctl.beta = self.beta


def _explained_variance(values, returns, mask) -> float:
    """1 - Var(R - V) / Var(R) over completion tokens: 1 is a perfect critic, <= 0 useless."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, mask)) ** 2, mask)
    return float(1 - var_d / var_r) if var_r > 0 else 0.0
