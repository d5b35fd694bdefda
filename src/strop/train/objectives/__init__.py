"""Objectives by stage. Each is a small module the one loop runs; the loop never branches on
the stage name. An entry builds the objective from (model, config)."""

from __future__ import annotations

from strop.models.transforms import shares_prefixes
from strop.train.objectives.causal_lm import CausalLMObjective
from strop.train.objectives.dpo import DPOObjective
from strop.train.objectives.grpo import GRPOObjective
from strop.train.objectives.kto import KTOObjective
from strop.train.objectives.orpo import ORPOObjective
from strop.train.objectives.ppo_objective import PPOObjective
from strop.train.objectives.rm import RewardObjective
from strop.train.objectives.simpo import SimPOObjective


def _causal_lm(model, cfg) -> CausalLMObjective:
    return CausalLMObjective(model, cfg.train.loss_chunk, shares_prefixes(cfg))


# pt (continued pre-training) and sft differ only in their data: raw text with every token a
# target vs chat with assistant-only targets. The loss is the same next-token cross-entropy.
OBJECTIVES = {
    "pt": _causal_lm,
    "sft": _causal_lm,
    "dpo": DPOObjective,
    "simpo": SimPOObjective,
    "orpo": ORPOObjective,
    "kto": KTOObjective,
    "rm": RewardObjective,
    "grpo": GRPOObjective,  # samples its own completions through the loop's rollout hook
    "ppo": PPOObjective,  # the same, with a value head (critic) beside the policy
}
