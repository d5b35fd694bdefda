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

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PtuningParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    virtual_tokens: int = Field(20, ge=1)
    """Number of virtual tokens (v1: at the input; v2: key/value positions at every layer)."""
    deep: bool = False
    """P-tuning v2: deep prompts at every layer (= prefix tuning without projection)."""
    encoder: Literal["mlp", "lstm"] | None = None
    """v1 only: the prompt encoder, mlp (default) or lstm (LSTM then MLP)."""
    encoder_hidden: int | None = Field(None, ge=1)
    """v1 only: the encoder's hidden width (default: the model's hidden size)."""
    encoder_layers: int | None = Field(None, ge=1)
    """lstm only: LSTM layers (default 2; the mlp encoder always has three linear layers)."""
    encoder_dropout: float | None = Field(None, ge=0, lt=1)
    """lstm only: dropout between LSTM layers (the mlp encoder has none)."""

    @model_validator(mode="after")
    def _v1_options_need_v1(self):
        v1 = ("encoder", "encoder_hidden", "encoder_layers", "encoder_dropout")
        used = [k for k in v1 if getattr(self, k) is not None]
        if self.deep and used:
            raise ValueError(f"{used[0]} applies to P-tuning v1 only; drop it or set deep: false")
        lstm_only = [
            k for k in ("encoder_layers", "encoder_dropout") if getattr(self, k) is not None
        ]
        if lstm_only and self.encoder != "lstm":
            raise ValueError(f"{lstm_only[0]} applies to encoder: lstm only")
        return self


def apply(model, params: PtuningParams):
    from peft import PrefixTuningConfig, PromptEncoderConfig

    from strop.models.prompt_learning import wrap

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
