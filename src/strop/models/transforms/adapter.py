"""Houlsby-style bottleneck adapters (Houlsby et al., 2019): a small residual MLP after the
attention block and after the feed-forward block of every decoder layer; the base stays frozen.

peft does not implement them, so strop does (strop.models.bottleneck) and saves them in its own
self-describing format (strop_adapter.json + strop_adapter.safetensors; docs/peft.md).
Not mergeable: the adapter is nonlinear, so no weight update reproduces it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AdapterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(64, ge=1)
    """Bottleneck width: hidden -> size -> hidden."""
    positions: list[Literal["attn", "mlp"]] = Field(
        default_factory=lambda: ["attn", "mlp"], min_length=1
    )
    """Where adapters go: after the attention block (attn), the feed-forward block (mlp), or both."""
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    """Nonlinearity between the down and up projections."""
    train_norms: bool = False
    """Also train the decoder's layer norms (as Houlsby et al. did); saved with the adapter."""


def apply(model, params: AdapterParams):
    from strop.errors import StropError
    from strop.models.bottleneck import attach

    if type(model).__name__.endswith("ForSequenceClassification"):
        raise StropError(
            "method adapter: stage rm is not supported (its value head would not train)"
        )
    positions = list(dict.fromkeys(params.positions))  # order kept, duplicates dropped
    attach(
        model,
        {
            "size": params.size,
            "positions": positions,
            "activation": params.activation,
            "train_norms": params.train_norms,
        },
    )
    return model
