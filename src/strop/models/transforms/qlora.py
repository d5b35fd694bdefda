"""QLoRA (Dettmers et al., 2023): LoRA on a frozen base quantised by bitsandbytes.

Every ``nn.Linear`` but the LM head (and ``modules_to_save``) becomes a bnb ``Linear4bit``
(NF4 or FP4 blocks of 64, optionally double-quantised absmax) or ``Linear8bitLt`` (LLM.int8);
embeddings, norms and the head keep their dtype. LoRA goes on top through peft, so final/ is a
standard LoRA adapter for the *unquantised* base dir. bnb runs on CPU too.

Not used: ``peft.prepare_model_for_kbit_training``. It freezes everything (get_peft_model does
that), upcasts every non-4-bit bf16/fp16 parameter (embeddings, head, norms) to fp32 — a waste
next to strop's autocast — and turns on gradient checkpointing, which is the loop's job.

Merging: the adapter was trained against dequant(quant(W)), so ``merged_model`` folds it into
the dequantised base, not the original W; the merged model then matches what was trained.
"""

from __future__ import annotations

import torch
from torch import nn

from strop.models.load import apply_adapter, load_model
from strop.models.transforms import lora
from strop.models.transforms.lora import lora_config, peft_task_type

_COMPUTE = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _skip(name: str, params) -> bool:
    """The LM head and modules_to_save stay unquantised (and trainable where asked)."""
    parts = name.split(".")
    return parts[-1] == "lm_head" or any(m in parts for m in params.modules_to_save)


def quantize(model: nn.Module, params) -> int:
    """Replace the model's nn.Linear layers by bnb 4-bit/8-bit ones, in place, on the weights'
    device. Returns the number of layers quantised."""
    import bitsandbytes as bnb

    head = model.get_output_embeddings()
    todo = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and m is not head and not _skip(name, params)
    ]
    for name, m in todo:
        w = m.weight.data
        bias = m.bias is not None
        if params.bits == 4:
            compute = w.dtype if params.compute_dtype == "auto" else _COMPUTE[params.compute_dtype]
            q = bnb.nn.Linear4bit(
                m.in_features,
                m.out_features,
                bias=bias,
                compute_dtype=compute,
                compress_statistics=params.double_quant,
                quant_type=params.quant_type,
                device="meta",
            )
            q.weight = bnb.nn.Params4bit(
                w,
                requires_grad=False,
                compress_statistics=params.double_quant,
                quant_type=params.quant_type,
                module=q,
            )._quantize(w.device)
            # bnb repacks the weights for its AVX512-BF16 CPU kernel on the first no-grad eval
            # forward, and that kernel has no backward: training after an eval then got silently
            # wrong gradients (bnb 0.50.2, measured). Keep the one trainable layout.
            q.support_avx512bf16_for_cpu = False
        else:
            q = bnb.nn.Linear8bitLt(
                m.in_features, m.out_features, bias=bias, has_fp16_weights=False, device="meta"
            )
            q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
            q.weight._quantize(w.device)
            # Its state dict has extra "SCB"/"weight_format" entries that torch DCP's
            # get_model_state_dict (final/ save) resolves with getattr: give it something.
            q.SCB, q.weight_format = q.weight.SCB, "row"
        if bias:
            q.bias = nn.Parameter(m.bias.data, requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, q)
    # peft picks its bnb LoRA layers only for models that say they are quantised.
    model.is_loaded_in_4bit = params.bits == 4
    model.is_loaded_in_8bit = params.bits == 8
    return len(todo)


def apply(model, params):
    from peft import get_peft_model

    quantize(model, params)
    return get_peft_model(model, lora_config(params, task_type=peft_task_type(model)))


def lr_multipliers(model, params) -> dict[str, float]:
    return lora.lr_multipliers(model, params)


def dequantize(model: nn.Module, dtype: torch.dtype) -> int:
    """Replace bnb 4-bit/8-bit layers by nn.Linear holding their dequantised weights (in
    ``dtype``), in place. Returns the number of layers replaced."""
    import bitsandbytes as bnb
    from peft.utils.integrations import dequantize_bnb_weight

    todo = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    ]
    for name, m in todo:
        if isinstance(m, bnb.nn.Linear4bit):
            if getattr(m.weight.quant_state, "packing_format_for_cpu", False):
                from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

                m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    m.weight.data, m.weight.quant_state
                )
            w = dequantize_bnb_weight(m.weight)
        else:
            w = dequantize_bnb_weight(m.weight, state=m.state)
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight = nn.Parameter(w.to(dtype), requires_grad=False)
        if m.bias is not None:
            lin.bias = nn.Parameter(m.bias.data.to(dtype), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, lin)
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if attr in vars(model):
            delattr(model, attr)
    return len(todo)


def load_quantized(model_dir, dtype: str, adapter_dir, params, attn: str = "sdpa"):
    """The trained model again: the base quantised exactly as in training, plus the adapter."""

    base, _, _ = load_model(str(model_dir), dtype, attn=attn)
    quantize(base, params)
    return apply_adapter(base, adapter_dir)


def merged_model(model_dir, dtype: str, adapter_dir, params, attn: str = "sdpa", probe=None):
    """A plain HF model: the adapter folded into the dequantised base (quantising is
    deterministic, so that is the base it trained on). Also returns the max abs logit
    difference to the quantised base + adapter on ``probe`` token ids."""

    trained = load_quantized(model_dir, dtype, adapter_dir, params, attn).eval()
    if probe is None:
        probe = torch.arange(32).remainder(trained.config.vocab_size)[None]
    with torch.no_grad():
        ref = trained(input_ids=probe).logits.float()
    del trained
    base, _, _ = load_model(str(model_dir), dtype, attn=attn)
    base_dtype = base.get_input_embeddings().weight.dtype
    quantize(base, params)
    dequantize(base, base_dtype)
    merged = apply_adapter(base, adapter_dir).merge_and_unload(safe_merge=True).eval()
    with torch.no_grad():
        err = (merged(input_ids=probe).logits.float() - ref).abs().max().item()
    return merged, err
