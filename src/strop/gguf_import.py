"""Convert a GGUF file into a normal safetensors HF dir once.

transformers reads GGUF (dequantising to float) but marks such a model as quantized and refuses
to train it, so strop saves a plain fp32 copy and uses that from then on (DESIGN.md §6).
"""

from __future__ import annotations

from pathlib import Path

import torch

from strop.quiet import quiet_transformers


def convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF-loaded model carries a quantizer that refuses to save; rebuild a plain model
    # from a config without the quantization marker and copy the dequantised weights in.
    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF import mismatch: missing={missing} unexpected={unexpected}")
    plain.generation_config = model.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
