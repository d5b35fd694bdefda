"""Methods are model transforms ``(model, params) -> model``, chosen by ``method.name``.

Each method has its own strict params class; adapter methods save a PEFT adapter dir, the rest
save a full HF model dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

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
    params: type[BaseModel]
    apply: Any  # (model, params) -> model
    is_adapter: bool  # final/ holds a PEFT adapter (True) or a full HF model dir (False)
    lr_multipliers: Any = None  # (model, params) -> {param name: lr multiplier}, e.g. LoRA+
    # (base_dir, dtype, adapter_dir, params, attn) -> (merged model, max |logit diff|) for
    # methods whose merge is not peft's plain merge_and_unload on the base (QLoRA).
    merge: Any = None
    # Why the method cannot be folded into the base weights (None: it can, or needs no merge).
    not_mergeable: str | None = None
    # Stages the method cannot train, with the reason.
    refused_stages: tuple[tuple[str, ...], str] | None = None


# The reward head and the online-RL rollout engine call the decoder without the virtual tokens.
PROMPT_LEARNING_STAGES = (
    ("rm", "ppo", "grpo"),
    "the reward head and the RL rollout engine run the decoder without virtual tokens",
)

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
    "adapter": Transform(
        adapter.AdapterParams,
        adapter.apply,
        is_adapter=True,
        not_mergeable="a bottleneck adapter is nonlinear, so no weight update reproduces it",
        refused_stages=(("rm",), "the reward model's value head would not train"),
    ),
    "prompt": Transform(
        prompt.PromptParams,
        prompt.apply,
        is_adapter=True,
        not_mergeable="its virtual tokens are extra inputs, not a change to any weight",
        refused_stages=PROMPT_LEARNING_STAGES,
    ),
    "prefix": Transform(
        prefix.PrefixParams,
        prefix.apply,
        is_adapter=True,
        not_mergeable="its key/value prefix is extra attention context, not a weight change",
        refused_stages=PROMPT_LEARNING_STAGES,
    ),
    "ptuning": Transform(
        ptuning.PtuningParams,
        ptuning.apply,
        is_adapter=True,
        not_mergeable="its virtual tokens / deep prompts are extra inputs, not a weight change",
        refused_stages=PROMPT_LEARNING_STAGES,
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


def check_method_fits(cfg, source: str = "config") -> None:
    """Refuse, before any training, a method combined with settings it cannot honour."""
    name = cfg.method["name"]
    transform, params = parse_method(cfg.method, source)
    if cfg.train.save_merged and transform.not_mergeable:
        raise StropError(
            f"{source}: train.save_merged: method {name} cannot be merged into the base weights "
            f"({transform.not_mergeable}); set train.save_merged: false"
        )
    if transform.refused_stages and cfg.stage in transform.refused_stages[0]:
        raise StropError(
            f"{source}: stage: method {name} cannot train stage {cfg.stage} "
            f"({transform.refused_stages[1]})"
        )
    if name in ("prompt", "prefix", "ptuning"):
        _check_prompt_learning(cfg, params, source)
    why = _share_prefix_obstacle(cfg)
    if cfg.data.share_prefix is True and why:
        raise StropError(f"{source}: data.share_prefix: {why}; or set data.share_prefix: false")


def _share_prefix_obstacle(cfg) -> str | None:
    """Why documents of this run cannot share prefixes, or None."""
    name = cfg.method["name"]
    if cfg.stage not in ("pt", "sft"):
        return f"stage {cfg.stage} scores whole sequences; only stages pt and sft share prefixes"
    if cfg.model.attn != "sdpa":
        return "it needs strop's per-document attention: set model.attn: sdpa"
    if name in ("prompt", "prefix", "ptuning"):
        return f"method {name} gives every document its own virtual tokens"
    return None


def shares_prefixes(cfg) -> bool:
    """data.share_prefix resolved: true, or auto where the run allows it."""
    setting = cfg.data.share_prefix
    return setting is True or (setting == "auto" and _share_prefix_obstacle(cfg) is None)


def _check_prompt_learning(cfg, params, source: str) -> None:
    name = cfg.method["name"]
    if cfg.data.packing and cfg.model.attn != "sdpa":
        raise StropError(
            f"{source}: data.packing: method {name} gives every packed document its own virtual "
            "tokens through strop's per-document attention, which needs model.attn: sdpa; "
            "set model.attn: sdpa or data.packing: false"
        )
    kv_prefix = name == "prefix" or (name == "ptuning" and params.deep)
    if kv_prefix and cfg.train.gradient_checkpointing:
        raise StropError(
            f"{source}: train.gradient_checkpointing: method {name} puts its prefix in the "
            "key/value cache, which transformers drops inside checkpointed layers; set "
            "train.gradient_checkpointing: false"
        )


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
