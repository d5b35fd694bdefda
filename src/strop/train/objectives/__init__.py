"""Objectives by stage. Each is a small module the one loop runs through the hooks of
strop.train.objectives.base.Objective; the loop never branches on the stage name."""

from __future__ import annotations

from strop.train.objectives.base import Objective, Setting
from strop.train.objectives.causal_lm import CausalLMObjective
from strop.train.objectives.dpo import DPOObjective
from strop.train.objectives.grpo import GRPOObjective
from strop.train.objectives.kto import KTOObjective
from strop.train.objectives.orpo import ORPOObjective
from strop.train.objectives.ppo import PPOObjective
from strop.train.objectives.rm import RewardObjective
from strop.train.objectives.simpo import SimPOObjective

# pt (continued pre-training) and sft differ only in their data: raw text with every token a
# target vs chat with assistant-only targets. The loss is the same next-token cross-entropy.
OBJECTIVES: dict[str, type[Objective]] = {
    "pt": CausalLMObjective,
    "sft": CausalLMObjective,
    "dpo": DPOObjective,
    "simpo": SimPOObjective,
    "orpo": ORPOObjective,
    "kto": KTOObjective,
    "rm": RewardObjective,
    "grpo": GRPOObjective,  # samples its own completions through the rollout hook
    "ppo": PPOObjective,  # the same, with a value head (critic) beside the policy
}

__all__ = ["OBJECTIVES", "Objective", "Setting"]
