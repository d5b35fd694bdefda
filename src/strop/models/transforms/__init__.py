"""Methods are model transforms ``(model, method) -> model``, chosen by ``method.name``.

A method's options and facts (adapter or not, mergeable, virtual tokens, refused stages) are
its typed config class in strop.config.methods; this module says what each method *does*.
Adapter methods save a PEFT adapter dir, the rest save a full HF model dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from strop.config.load import format_validation_error
from strop.config.methods import Method
from strop.config.schema import Section
from strop.errors import StropError
from strop.models.transforms import (
    adapter,
    bitfit,
    dora,
    freeze,
    full,
    ia3,
    lora,
    prefix,
    prompt,
    ptuning,
    qlora,
)


@dataclass(frozen=True)
class Transform:
    apply: Any  # (model, method) -> model
    lr_multipliers: Any = None  # (model, method) -> {param name: lr multiplier}, e.g. LoRA+
    # (base_dir, dtype, adapter_dir, method, attn) -> (merged model, max |logit diff|) for
    # methods whose merge is not peft's plain merge_and_unload on the base (QLoRA).
    merge: Any = None


TRANSFORMS: dict[str, Transform] = {
    "full": Transform(full.apply),
    "freeze": Transform(freeze.apply),
    "bitfit": Transform(bitfit.apply),
    "lora": Transform(lora.apply, lora.lr_multipliers),
    "dora": Transform(dora.apply),
    "ia3": Transform(ia3.apply),
    "qlora": Transform(qlora.apply, qlora.lr_multipliers, qlora.merged_model),
    "adapter": Transform(adapter.apply),
    "prompt": Transform(prompt.apply),
    "prefix": Transform(prefix.apply),
    "ptuning": Transform(ptuning.apply),
}


class _MethodSection(Section):  # a one-field model, so errors read "method (lora): ..."
    method: Method


def parse_method(method: dict[str, Any] | Any, source: str = "config") -> tuple[Transform, Any]:
    """The Transform and the typed method for ``{name: lora, r: 8, ...}`` (or a typed method
    already parsed, e.g. ``cfg.method``). Configs parse ``method`` once, at load; this is for
    code that builds a method by hand (tests, benchmarks)."""
    if isinstance(method, dict):
        try:
            method = _MethodSection.model_validate({"method": method}).method
        except ValidationError as exc:
            raise StropError(format_validation_error(exc, source, _MethodSection)) from None
    return TRANSFORMS[method.name], method


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
