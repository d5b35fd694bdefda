"""Houlsby-style bottleneck adapters (Houlsby et al., 2019): a small residual MLP after the
attention block and after the feed-forward block of every decoder layer; the base stays frozen.

peft does not implement them, so strop does (strop.models.bottleneck) and saves them in its own
self-describing format (strop_adapter.json + strop_adapter.safetensors; docs/peft.md).
Not mergeable: the adapter is nonlinear, so no weight update reproduces it.
"""

from __future__ import annotations

from strop.config.methods import AdapterMethod
from strop.errors import StropError
from strop.models.bottleneck import attach


def apply(model, params: AdapterMethod):

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
