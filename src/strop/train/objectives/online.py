"""What the online RL objectives (stage grpo, stage ppo) share: the tokenizer and stop tokens
for sampling, reward scoring, the reference policy, greedy held-out evaluation, and the
rollout buffer that a checkpoint carries (so a resume inside a ``num_iterations`` cycle
reuses exactly the rollouts an uninterrupted run would).

A subclass implements ``rollout(take, step) -> rows`` (the loop's hook), ``collate``,
``units`` and ``forward``.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
from torch import nn

from strop.data.batching import collate
from strop.hub import resolve_model
from strop.infer import stop_token_ids
from strop.models.load import load_tokenizer
from strop.rollout import Rollout, RolloutRow, completion_logps, sample
from strop.train.objectives.base import Objective, Setting
from strop.train.objectives.reference import check_adapter_only, load_frozen_reference
from strop.train.rewards import RewardStats, combine, resolve


class OnlineRLObjective(Objective):
    """``section`` is the stage's config section (cfg.grpo, cfg.ppo); it must have
    ``rewards``, ``max_new_tokens``, ``temperature``, ``reference`` and ``reference_model``.
    ``kl_weight`` > 0 means a reference policy is needed."""

    row_type: type[RolloutRow] = RolloutRow

    def __init__(self, model: nn.Module, cfg, section, kl_weight: float):
        super().__init__(model)
        self.section, self.stage = section, cfg.stage
        self.loss_chunk, self.seed = cfg.train.loss_chunk, cfg.train.seed
        self.specs = section.reward_specs()
        for spec in self.specs:
            resolve(spec.name, f"{cfg.stage}.rewards")  # unknown rewards fail before model work
        self.tokenizer = load_tokenizer(resolve_model(cfg.model.name))
        self.stop_ids = stop_token_ids(model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        auto = "adapter_off" if hasattr(model, "disable_adapter") else "model"
        ref = section.reference
        self.mode = (auto if ref == "auto" else ref) if kl_weight > 0 else None
        if self.mode == "adapter_off":
            check_adapter_only(model)
        self._reference: list[nn.Module] = []  # a list: not a submodule, never trained/saved
        self._buffer: list[RolloutRow] = []
        self._iteration = 0
        self.reward_stats = RewardStats()  # violations, timeouts, errors: logged per step

    # -- the reference policy --------------------------------------------------------------
    def prepare(self, setting: Setting) -> None:
        """reference: model loads ``reference_model`` (default the policy's base), frozen."""
        if self.mode == "model":
            cfg = setting.cfg
            self.set_reference_model(load_frozen_reference(self.section, cfg, setting.device))
            setting.log(f"reference: {self.section.reference_model or cfg.model.name}, frozen")

    def set_reference_model(self, reference: nn.Module) -> None:
        self._reference = [reference.eval().requires_grad_(False)]

    @torch.no_grad()
    def _score_reference(self, rows: list[RolloutRow], per_batch: int = 16) -> None:
        """Fill ``ref_logps`` of every row: the reference's log-probs of the sampled tokens."""
        model = self._reference[0] if self.mode == "model" else self.model
        ctx = self.model.disable_adapter() if self.mode == "adapter_off" else nullcontext()
        with ctx:
            for part, lp in self._per_batch_logps(model, rows, per_batch):
                for r, x in zip(part, lp.split([len(r.old_logps) for r in part]), strict=True):
                    r.ref_logps = x.tolist()

    def _per_batch_logps(self, model, rows, per_batch: int, return_hidden: bool = False):
        """Yield (rows, their completion log-probs [N] (and hidden states)) in eval mode."""
        was_training = model.training
        model.eval()
        try:
            for s in range(0, len(rows), per_batch):
                part = rows[s : s + per_batch]
                batch = collate(part, self.pad_id, True, with_docs=True)
                batch = {
                    k: v.to(self._device()) if torch.is_tensor(v) else v for k, v in batch.items()
                }
                yield (
                    part,
                    completion_logps(
                        model, batch, self.loss_chunk, self.section.temperature, return_hidden
                    ),
                )
        finally:
            model.train(was_training)

    def _device(self):
        return next(self.model.parameters()).device

    # -- sampling and rewards ----------------------------------------------------------------
    def _sample(self, prompts, n: int, step: int, temperature=None, top_p=None) -> Rollout:
        s = self.section
        return sample(
            self.model,
            [p.input_ids for p in prompts],
            n,
            s.max_new_tokens,
            self.stop_ids,
            self.pad_id,
            s.temperature if temperature is None else temperature,
            s.top_p if top_p is None else top_p,
            self.seed * 1_000_003 + step,
        )

    def _score(self, prompts, ro: Rollout) -> tuple[list[float], dict]:
        """(weighted reward per completion, each reward function's scores); ``prompts`` holds
        the prompt row of every completion (a group's prompt repeated)."""
        texts = [
            self.tokenizer.decode(c[:-1] if done else c, skip_special_tokens=True)
            for c, done in zip(ro.completion_ids, ro.finished, strict=True)
        ]
        names = sorted({k for p in prompts for k in p.fields})
        fields = {k: [p.fields.get(k) for p in prompts] for k in names}
        fields["completion_ids"] = ro.completion_ids
        return combine(self.specs, [p.messages for p in prompts], texts, fields, self.reward_stats)

    @staticmethod
    def rollout_metrics(rewards: torch.Tensor, each: dict, ro: Rollout) -> dict[str, float]:
        """Reward mean/std (per function too), completion lengths, truncation, generation time."""
        lengths = [len(c) for c in ro.completion_ids]
        return {
            "reward": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            **{f"reward/{k}": sum(v) / len(v) for k, v in each.items()},
            **{
                f"reward_std/{k}": torch.tensor(v).std(unbiased=False).item()
                for k, v in each.items()
            },
            "completion_len": sum(lengths) / len(lengths),
            "completion_len_max": max(lengths),
            "truncated_fraction": 1 - sum(ro.finished) / len(lengths),
            "time/generate": ro.stats["seconds"],
        }

    @torch.no_grad()
    def evaluate_rows(self, rows) -> dict:
        """Greedy completions of held-out prompts, scored: eval_reward (eval_loss is its
        negation, so that lower is better like every other stage's eval loss)."""
        total, each_sum = [], {}
        for i in range(0, len(rows), 16):
            part = rows[i : i + 16]
            ro = self._sample(part, 1, 0, temperature=0.0, top_p=1.0)
            t, each = self._score(part, ro)
            total += t
            for k, v in each.items():
                each_sum[k] = each_sum.get(k, 0.0) + sum(v)
        mean = sum(total) / len(total)
        return {
            "eval_loss": -mean,
            "eval_reward": mean,
            **{f"eval_reward/{k}": v / len(total) for k, v in each_sum.items()},
            **{f"eval_{k}": v for k, v in self.reward_stats.take().items()},
        }

    # -- resume: the rollouts of an unfinished num_iterations cycle ----------------------------
    def rollout_state(self) -> dict:
        rows = [[getattr(r, f.name) for f in dataclasses.fields(r)] for r in self._buffer]
        return {"buffer": rows, "metrics": self.step_metrics}

    def load_rollout_state(self, state: dict) -> None:
        self._buffer = [self.row_type(*r) for r in state.get("buffer", [])]
        self.step_metrics = state.get("metrics", {})
