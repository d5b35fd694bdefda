"""P-tuning.

v1 (Liu et al., 2021, "GPT Understands, Too"): virtual tokens at the input, produced by a small
encoder (an MLP, or a bidirectional LSTM followed by an MLP) from trainable embeddings; through
peft's PromptEncoderConfig (adapter: a peft P_TUNING dir; peft saves the encoder's output).

v2 (Liu et al., 2022, ``deep: true``): "deep prompt tuning", trainable prompts at every layer.
That is prefix tuning without the reparametrisation MLP, so it is built as peft's
PrefixTuningConfig(prefix_projection=False) and saved as a PREFIX_TUNING adapter: loading tools
see a prefix-tuning adapter, which is what it is.
"""

from __future__ import annotations

from strop.config.methods import PtuningMethod
from strop.models.prompt_learning import wrap


def apply(model, params: PtuningMethod):
    from peft import PrefixTuningConfig, PromptEncoderConfig

    if params.deep:
        cfg = PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=params.virtual_tokens,
            prefix_projection=False,
        )
        return wrap(model, cfg, "ptuning")
    cfg = PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=params.virtual_tokens,
        encoder_reparameterization_type="LSTM" if params.encoder == "lstm" else "MLP",
        encoder_hidden_size=params.encoder_hidden or model.config.hidden_size,
        encoder_num_layers=params.encoder_layers or 2,
        encoder_dropout=params.encoder_dropout or 0.0,
    )
    return wrap(model, cfg, "ptuning")
