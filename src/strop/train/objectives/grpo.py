"""Group Relative Policy Optimisation (stage grpo): the maths, then the objective.

GRPO (Shao et al., 2024, DeepSeekMath eq. 3) samples a group of G completions o_1..o_G per
prompt q from the old policy, scores them r_1..r_G, and uses the group-normalised reward as
the advantage of every token of o_i (outcome supervision, eq. in §4.1.2):

    A_i = (r_i - mean(r)) / (std(r) + eps)           (std: population std over the group)

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
from contextlib import nullcontext

import torch
from torch import nn

from strop.data.batching import collate
from strop.data.render import IGNORE
from strop.errors import StropError
from strop.hub import resolve_model
from strop.infer import stop_token_ids
from strop.models.load import load_model, load_tokenizer
from strop.train.objectives.ppo import clipped_surrogate, kl_k3, masked_sum
from strop.train.objectives.sequence import _check_adapter_only
from strop.train.rewards import combine, resolve
from strop.train.rollout import Rollout, RolloutRow, completion_logps, padded, sample


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """rewards [N] (N = prompts x group_size, groups contiguous) -> advantages [N]."""
    r = rewards.view(-1, group_size)  # [P, G]
    centred = r - r.mean(1, keepdim=True)
    if scale:
        centred = centred / (r.std(1, unbiased=False, keepdim=True) + eps)
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
    logp, old_logp, ref_logp, advantages, mask, beta, eps_low, eps_high=None,
    aggregation="sequence_mean", max_len=1,
) -> torch.Tensor:  # fmt: skip
    """The aggregated loss of one batch (what the loop computes over a whole step)."""
    loss, _, _ = grpo_token_loss(logp, old_logp, ref_logp, advantages, beta, eps_low, eps_high)
    total, units = GRPO_AGGREGATIONS[aggregation](loss, mask.to(loss.dtype), max_len)
    return total / units.clamp(min=1)


# ---- the objective ---------------------------------------------------------------------------
class GRPOObjective(nn.Module):
    """Samples groups through ``rollout`` (the loop's hook), then optimises the clipped
    surrogate on them for ``num_iterations`` optimizer steps."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        s = self.section = cfg.grpo
        self.model, self.loss_chunk, self.seed = model, cfg.train.loss_chunk, cfg.train.seed
        self.specs = s.reward_specs()
        for spec in self.specs:
            resolve(spec.name)  # an unknown reward fails before any model work
        self.tokenizer = load_tokenizer(resolve_model(cfg.model.name))
        self.stop_ids = stop_token_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        auto = "adapter_off" if hasattr(model, "disable_adapter") else "model"
        self.mode = (auto if s.reference == "auto" else s.reference) if s.beta > 0 else None
        if self.mode == "adapter_off":
            _check_adapter_only(model)
        self._reference: list[nn.Module] = []  # a list: not a submodule, never trained/saved
        self._buffer: list[RolloutRow] = []
        self._iteration = 0
        self.step_metrics: dict[str, float] = {}

    def load_reference_model(self, cfg, device) -> None:
        """reference: model: ``reference_model`` (default the policy's base), frozen."""
        name = self.section.reference_model or cfg.model.name
        reference, ref_tok, _ = load_model(name, cfg.model.dtype, attn=cfg.model.attn)
        if ref_tok.get_vocab() != self.tokenizer.get_vocab():
            raise StropError(f"grpo.reference_model: {name} has another tokenizer than model.name")
        self.set_reference_model(reference.to(device))

    def set_reference_model(self, reference: nn.Module) -> None:
        self._reference = [reference.eval().requires_grad_(False)]

    # -- rollouts (called by the loop once per optimizer step) ---------------------------
    def rollout(self, take, step: int) -> list[RolloutRow]:
        s = self.section
        self._iteration = step % s.num_iterations
        if self._iteration and self._buffer:
            return self._buffer  # a further update on the same rollouts
        prompts = take()
        ro = sample(
            self.model, [p.input_ids for p in prompts], s.group_size, s.max_new_tokens,
            self.stop_ids, self.pad_id, s.temperature, s.top_p, self.seed * 1_000_003 + step,
        )  # fmt: skip
        t0 = time.perf_counter()
        rewards, each = self._score([p for p in prompts for _ in range(s.group_size)], ro)
        t1 = time.perf_counter()
        r = torch.tensor(rewards, dtype=torch.float64)
        adv = group_advantages(r, s.group_size, s.scale_rewards).tolist()
        zero = zero_advantage_groups(r, s.group_size).tolist()
        keep = [i for i in range(len(adv)) if not (s.dynamic_sampling and zero[i // s.group_size])]
        keep = keep or list(range(len(adv)))  # every group flat: train on them (KL term only)
        rows = [
            RolloutRow(p + c, [IGNORE] * len(p) + c, [len(p) + len(c)], {"adv": adv[i]}, lp)
            for i in keep
            for p, c, lp in [(ro.prompt_ids[i], ro.completion_ids[i], ro.logps[i])]
        ]
        if self.mode is not None:
            self._score_reference(rows)
        lengths = [len(c) for c in ro.completion_ids]
        self.step_metrics = {
            "reward": r.mean().item(),
            "reward_std": r.std(unbiased=False).item(),
            **{f"reward/{k}": sum(v) / len(v) for k, v in each.items()},
            **{f"reward_std/{k}": torch.tensor(v).std(unbiased=False).item() for k, v in each.items()},
            "completion_len": sum(lengths) / len(lengths),
            "completion_len_max": max(lengths),
            "truncated_fraction": 1 - sum(ro.finished) / len(lengths),
            "zero_adv_groups": sum(zero) / len(zero),
            "time/generate": ro.stats["seconds"],
            "time/reward": t1 - t0,
            "time/reference": time.perf_counter() - t1,
        }  # fmt: skip
        self._buffer = rows
        return rows

    def _score(self, prompts, ro: Rollout) -> tuple[list[float], dict]:
        texts = [
            self.tokenizer.decode(c[:-1] if done else c, skip_special_tokens=True)
            for c, done in zip(ro.completion_ids, ro.finished, strict=True)
        ]
        names = sorted({k for p in prompts for k in p.fields})
        fields = {k: [p.fields.get(k) for p in prompts] for k in names}
        fields["completion_ids"] = ro.completion_ids
        return combine(self.specs, [p.messages for p in prompts], texts, fields)

    @torch.no_grad()
    def _score_reference(self, rows: list[RolloutRow], per_batch: int = 16) -> None:
        model = self._reference[0] if self.mode == "model" else self.model
        ctx = self.model.disable_adapter() if self.mode == "adapter_off" else nullcontext()
        was_training = model.training
        model.eval()
        with ctx:
            for s in range(0, len(rows), per_batch):
                part = rows[s : s + per_batch]
                batch = collate(part, self.pad_id, True, with_docs=True)
                batch = {
                    k: v.to(self._device()) if torch.is_tensor(v) else v for k, v in batch.items()
                }
                lp = completion_logps(model, batch, self.loss_chunk, self.section.temperature)
                for r, x in zip(part, lp.split([len(r.old_logps) for r in part]), strict=True):
                    r.ref_logps = x.tolist()
        model.train(was_training)

    def _device(self):
        return next(self.model.parameters()).device

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
                "kl": masked_sum(kl, mask), "kl#n": n,
                "clip_fraction": masked_sum(clipped, mask), "clip_fraction#n": n,
                "entropy": -masked_sum(lp.detach(), mask), "entropy#n": n,
            },
        }  # fmt: skip

    @torch.no_grad()
    def evaluate_rows(self, rows) -> dict:
        """Greedy completions of held-out prompts, scored: eval_reward (eval_loss is its
        negation, so that lower is better like every other stage's eval loss)."""
        s, total, each_sum = self.section, [], {}
        for i in range(0, len(rows), 16):
            part = rows[i : i + 16]
            ro = sample(self.model, [p.input_ids for p in part], 1, s.max_new_tokens,
                        self.stop_ids, self.pad_id, temperature=0.0)  # fmt: skip
            t, each = self._score(part, ro)
            total += t
            for k, v in each.items():
                each_sum[k] = each_sum.get(k, 0.0) + sum(v)
        mean = sum(total) / len(total)
        return {"eval_loss": -mean, "eval_reward": mean,
                **{f"eval_reward/{k}": v / len(total) for k, v in each_sum.items()}}  # fmt: skip

    # -- resume: the rollouts of an unfinished num_iterations cycle ----------------------------
    def rollout_state(self) -> dict:
        rows = [
            [r.input_ids, r.labels, r.doc_lens, r.values, r.old_logps, r.ref_logps]
            for r in self._buffer
        ]
        return {"buffer": rows, "metrics": self.step_metrics}  # fmt: skip

    def load_rollout_state(self, state: dict) -> None:
        self._buffer = [RolloutRow(*r) for r in state.get("buffer", [])]
        self.step_metrics = state.get("metrics", {})
