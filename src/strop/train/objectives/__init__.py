"""Objectives by stage. Each is a small module the one loop runs; the loop never branches on
the stage name."""

from __future__ import annotations

from strop.train.objectives.causal_lm import CausalLMObjective

# pt (continued pre-training) and sft differ only in their data: raw text with every token a
# target vs chat with assistant-only targets. The loss is the same next-token cross-entropy.
OBJECTIVES = {
    "pt": CausalLMObjective,
    "sft": CausalLMObjective,
}
