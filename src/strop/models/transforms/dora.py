"""DoRA (Liu et al., 2024): weight-decomposed LoRA through peft (``LoraConfig(use_dora=True)``).

Each target weight is split into a magnitude vector and a direction; the direction gets a LoRA
update and is renormalised, the magnitude trains directly. Adapters are standard peft LoRA dirs
with ``use_dora: true``. Runs peft's own forward (strop's fused LoRA path does not cover DoRA).
"""

from __future__ import annotations

from strop.models.transforms.lora import lora_config, peft_task_type


def apply(model, params):
    from peft import get_peft_model

    return get_peft_model(
        model, lora_config(params, use_dora=True, task_type=peft_task_type(model))
    )
