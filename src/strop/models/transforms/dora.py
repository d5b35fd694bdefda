"""DoRA (Liu et al., 2024): weight-decomposed LoRA through peft (``LoraConfig(use_dora=True)``).

Each target weight is split into a magnitude vector and a direction; the direction gets a LoRA
update and is renormalised, the magnitude trains directly. Adapters are standard peft LoRA dirs
with ``use_dora: true``. Runs peft's own forward (strop's fused LoRA path does not cover DoRA).
"""

from __future__ import annotations

from pydantic import ConfigDict, create_model

from strop.models.transforms.lora import LoraParams, lora_config, peft_task_type

# LoRA's options that mean the same for DoRA (LoRA+ and the fused forward are LoRA-only).
_SHARED = ("r", "alpha", "dropout", "targets", "rslora", "init", "modules_to_save")

DoraParams = create_model(
    "DoraParams",
    __config__=ConfigDict(extra="forbid"),
    __doc__="DoRA params: LoRA's r, alpha, dropout, targets, rslora, init, modules_to_save.",
    __module__=__name__,
    **{k: (f.annotation, f) for k, f in LoraParams.model_fields.items() if k in _SHARED},
)


def apply(model, params):
    from peft import get_peft_model

    return get_peft_model(
        model, lora_config(params, use_dora=True, task_type=peft_task_type(model))
    )
