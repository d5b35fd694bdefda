"""Load a model and its tokenizer from a name or dir, optionally with a PEFT adapter."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from strop.errors import StropError
from strop.hub import resolve_model
from strop.models import bottleneck, prompt_learning
from strop.models.attention import register
from strop.quiet import quiet_transformers

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matmul instructions (AVX512-BF16 or AMX), where bf16 autocast
    ran ~2x faster than fp32 here (matmul peak 388 vs 125 GFLOP/s, docs/LOG.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16_autocast(precision: str, device: torch.device) -> bool:
    """precision auto: bf16 autocast on bf16-capable GPUs and CPUs with native bf16 matmul."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' keeps weights in fp32 on CPU (mixed precision is the loop's autocast job) and
    bf16 on GPUs that support it."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise StropError(f"model.dtype: unknown dtype {name!r}; use auto, fp32, bf16 or fp16")
    return DTYPES[name]


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    dtype: str = "auto",
    adapter: str | None = None,
    attn: str = "sdpa",
    head: str = "causal_lm",
):
    """Return (model, tokenizer, model_dir). With ``adapter``, the PEFT adapter is applied.

    ``head="reward"`` loads the same weights under a scalar value head (transformers'
    ...ForSequenceClassification with one label): a causal LM's ``score`` starts random
    (seeded by the caller's torch seed), a trained reward model's loads as saved."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    quiet_transformers()
    model_dir = resolve_model(name_or_path)
    if attn == "sdpa":  # sdpa, plus one fused causal call per document for packed rows
        attn = register()
    _require_safetensors(model_dir)
    # trust_remote_code stays False: a model dir's own Python never runs (issue 18)
    kwargs = {
        "dtype": resolve_dtype(dtype),
        "attn_implementation": attn,
        "trust_remote_code": False,
    }
    if head == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    tok_dir = model_dir
    if adapter is not None:
        model = apply_adapter(model, Path(adapter))
        if (Path(adapter) / "tokenizer_config.json").exists():
            tok_dir = Path(adapter)
    tokenizer = load_tokenizer(tok_dir)
    if head == "reward" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # transformers' own forward needs it
    return model, tokenizer, model_dir


def _require_safetensors(model_dir: Path, what: str = "model") -> None:
    """strop reads weights from safetensors only: .bin/.pt weight files are pickles, which can
    run code when loaded (transformers loads them with weights_only=True, but the user would
    then get an unpickling traceback instead of a sentence)."""
    if not any(Path(model_dir).glob("*.safetensors")):
        pickles = sorted(p.name for p in Path(model_dir).glob("*.bin"))
        found = f" (it has {', '.join(pickles[:3])}: pickle files)" if pickles else ""
        raise StropError(
            f"{model_dir}: no .safetensors weights{found}; strop loads {what} weights from "
            "safetensors only: convert them once with transformers' save_pretrained"
            "(safe_serialization=True) in a trusted environment"
        )


def apply_adapter(model, adapter_dir: Path):
    from peft import PeftModel

    if bottleneck.is_adapter_dir(adapter_dir):  # strop's own format (no peft equivalent)
        return bottleneck.load(model, adapter_dir)
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.exists():
        raise StropError(f"{adapter_dir}: not an adapter dir (no adapter_config.json)")
    config = json.loads(cfg.read_text())  # a malformed file fails here with a clear JSON error
    _require_safetensors(adapter_dir, "adapter")

    if prompt_learning.is_prompt_learning_dir(config):  # logits / generation fixes, same files
        return prompt_learning.load(model, adapter_dir)
    return PeftModel.from_pretrained(model, adapter_dir)


def frozen_linears_to(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store frozen nn.Linear weights in the autocast dtype once, instead of autocast casting
    them again at every use (it caches casts only for weights that require grad). The matmul
    results are bitwise the same; weights tied to the input embeddings are left alone so the
    residual stream keeps its dtype. For adapter methods only: their final/ never holds these.
    Returns the number of weights converted."""
    tied = model.get_input_embeddings().weight
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight
            if type(w).__name__ in ("Params4bit", "Int8Params"):  # bnb (QLoRA): packed ints
                continue
            if not w.requires_grad and w is not tied and w.dtype != dtype:
                module.weight.data = w.data.to(dtype)
                n += 1
    return n
