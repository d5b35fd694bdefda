"""LoRA (Hu et al., 2021) through peft, so adapters stay in the standard format.

Options: rsLoRA (Kalajdzievski, 2023: scale alpha/sqrt(r) instead of alpha/r) and LoRA+
(Hayou et al., 2024: B matrices learn ``loraplus_lr_ratio`` times faster than A).
"""

from __future__ import annotations

from strop.config.methods import LoraMethod
from strop.models.fused_lora import fuse_lora_layers


def peft_task_type(model) -> str:
    """SEQ_CLS for a reward model (its scalar ``score`` head then trains in full and is saved
    with the adapter, as peft's modules_to_save), CAUSAL_LM otherwise."""
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


def lora_config(params, use_dora: bool = False, task_type: str = "CAUSAL_LM"):
    """The peft LoraConfig for LoRA params (DoRA shares every field it uses)."""
    from peft import LoraConfig

    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.targets,
        use_rslora=params.rslora,
        use_dora=use_dora,
        init_lora_weights=params.init,
        modules_to_save=params.modules_to_save or None,
        task_type=task_type,
    )


def apply(model, params: LoraMethod):
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(params, task_type=peft_task_type(model)))
    if params.fused:
        fuse_lora_layers(model)
    return model


def lr_multipliers(model, params: LoraMethod) -> dict[str, float]:
    """Per-parameter-name learning-rate multipliers (LoRA+ scales lora_B)."""
    if not params.loraplus_lr_ratio:
        return {}
    return {
        n: params.loraplus_lr_ratio
        for n, p in model.named_parameters()
        if p.requires_grad and "lora_B" in n
    }
