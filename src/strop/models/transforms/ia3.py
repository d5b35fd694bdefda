"""IA3 (Liu et al., 2022): learned vectors that rescale activations, through peft's IA3Config.

Attention targets scale their outputs (keys, values); feed-forward targets scale their inputs
(the MLP down projection). With ``init: true`` the vectors start at ones, so training starts
exactly at the base model. Adapters are standard peft IA3 dirs.
"""

from __future__ import annotations

from strop.config.methods import IA3Method
from strop.models.transforms.lora import peft_task_type


def apply(model, params: IA3Method):
    from peft import IA3Config, get_peft_model

    cfg = IA3Config(
        target_modules=params.targets,
        feedforward_modules=params.feedforward_modules,
        init_ia3_weights=params.init,
        task_type=peft_task_type(model),
    )
    return get_peft_model(model, cfg)
