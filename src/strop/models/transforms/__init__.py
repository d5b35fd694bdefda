"""Methods are model transforms ``(model, params) -> model``, chosen by ``method.name``.

Each method has its own strict params class; adapter methods save a PEFT adapter dir, the rest
save a full HF model dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from strop.errors import StropError
from strop.models.transforms import bitfit, dora, freeze, full, ia3, lora, qlora


@dataclass(frozen=True)
class Transform:
    params: type[BaseModel]
    apply: Any  # (model, params) -> model
    is_adapter: bool  # final/ holds a PEFT adapter (True) or a full HF model dir (False)
    lr_multipliers: Any = None  # (model, params) -> {param name: lr multiplier}, e.g. LoRA+
    # (base_dir, dtype, adapter_dir, params, attn) -> (merged model, max |logit diff|) for
    # methods whose merge is not peft's plain merge_and_unload on the base (QLoRA).
    merge: Any = None


TRANSFORMS: dict[str, Transform] = {
    "full": Transform(full.FullParams, full.apply, is_adapter=False),
    "freeze": Transform(freeze.FreezeParams, freeze.apply, is_adapter=False),
    "bitfit": Transform(bitfit.BitFitParams, bitfit.apply, is_adapter=False),
    "lora": Transform(lora.LoraParams, lora.apply, True, lora.lr_multipliers),
    "dora": Transform(dora.DoraParams, dora.apply, is_adapter=True),
    "ia3": Transform(ia3.IA3Params, ia3.apply, is_adapter=True),
    "qlora": Transform(
        qlora.QloraParams, qlora.apply, True, qlora.lr_multipliers, qlora.merged_model
    ),
}


def parse_method(method: dict[str, Any], source: str = "config") -> tuple[Transform, BaseModel]:
    """Split ``{name: lora, r: 8, ...}`` into its Transform and validated params."""
    from strop.config.load import format_validation_error

    name = method.get("name")
    if name not in TRANSFORMS:
        import difflib

        close = difflib.get_close_matches(str(name), TRANSFORMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise StropError(
            f"{source}: method.name: unknown method {name!r} (known: {', '.join(TRANSFORMS)}){hint}"
        )
    transform = TRANSFORMS[name]
    fields = {k: v for k, v in method.items() if k != "name"}
    try:
        params = transform.params.model_validate(fields)
    except ValidationError as exc:
        msg = format_validation_error(exc, source, transform.params)
        raise StropError(msg.replace(f"{source}: ", f"{source}: method ({name}): ", 1)) from None
    return transform, params


def validate_method_params(method: dict[str, Any], source: str = "config") -> None:
    parse_method(method, source)


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
