"""The reference policy that DPO-family, KTO and online-RL objectives compare against."""

from __future__ import annotations

import torch
from torch import nn

from strop.config.schema import Config
from strop.errors import StropError
from strop.hub import resolve_model
from strop.models.load import load_model, load_tokenizer


def load_frozen_reference(section, cfg: Config, device: torch.device) -> nn.Module:
    """``section.reference_model`` (default the policy's base), frozen, on ``device``. It must
    share the policy's tokenizer: its log-probs of the policy's token ids would mean nothing
    under another vocabulary."""
    name = section.reference_model or cfg.model.name
    reference, ref_tok, _ = load_model(name, cfg.model.dtype, attn=cfg.model.attn)
    if ref_tok.get_vocab() != load_tokenizer(resolve_model(cfg.model.name)).get_vocab():
        raise StropError(
            f"{cfg.stage}.reference_model: {name} has another tokenizer than model.name "
            f"{cfg.model.name}; the reference must share the policy's tokenizer"
        )
    return reference.to(device).eval().requires_grad_(False)


def check_adapter_only(model: nn.Module) -> None:
    """reference: adapter_off is the reference only if nothing but adapter weights trains."""
    if not hasattr(model, "disable_adapter"):
        raise StropError(
            "reference: adapter_off needs an adapter method (lora, dora, ia3, qlora); "
            "use reference: precompute or model"
        )
    others = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not any(k in n for k in ("lora_", "ia3_", "modules_to_save"))
    ]
    saved = [n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    if others or saved:
        name = (others or saved)[0]
        raise StropError(
            f"reference: adapter_off would be wrong: {name} trains outside the adapter, so the "
            "model with adapters disabled is not the initial model; use reference: precompute"
        )
