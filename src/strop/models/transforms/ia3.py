"""IA3 (Liu et al., 2022): learned vectors that rescale activations, through peft's IA3Config.

Attention targets scale their outputs (keys, values); feed-forward targets scale their inputs
(the MLP down projection). With ``init: true`` the vectors start at ones, so training starts
exactly at the base model. Adapters are standard peft IA3 dirs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class IA3Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: str | list[str] = Field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    """Module names (or a peft regex) to rescale; the default suits Llama-style names."""
    feedforward_modules: str | list[str] = Field(default_factory=lambda: ["down_proj"])
    """Targets whose input (not output) is rescaled; must be a subset of targets."""
    init: bool = True
    """peft's init_ia3_weights: True (ones, so training starts at the base model); False gives
    random vectors (tests only)."""


def apply(model, params: IA3Params):
    from peft import IA3Config, get_peft_model

    from strop.models.transforms.lora import peft_task_type

    cfg = IA3Config(
        target_modules=params.targets,
        feedforward_modules=params.feedforward_modules,
        init_ia3_weights=params.init,
        task_type=peft_task_type(model),
    )
    return get_peft_model(model, cfg)
