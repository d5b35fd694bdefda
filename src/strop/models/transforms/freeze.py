"""Freeze tuning: train only chosen decoder layers and/or parameters matching name patterns."""

from __future__ import annotations

import re

from strop.config.methods import FreezeMethod
from strop.errors import StropError

_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def apply(model, params: FreezeMethod):
    names = [n for n, _ in model.named_parameters()]
    layer_ids = sorted({int(m.group(1)) for n in names if (m := _LAYER_RE.search(n))})
    if isinstance(params.trainable_layers, int):
        chosen = set(layer_ids[-params.trainable_layers :]) if params.trainable_layers else set()
    else:
        chosen = set(params.trainable_layers)
        unknown = chosen - set(layer_ids)
        if unknown:
            raise StropError(
                f"method.trainable_layers: layers {sorted(unknown)} do not exist "
                f"(the model has layers 0..{len(layer_ids) - 1})"
            )
    patterns = [re.compile(p) for p in params.trainable_patterns]
    embed = model.get_input_embeddings().weight
    n_trainable = 0
    for name, p in model.named_parameters():
        m = _LAYER_RE.search(name)
        train = (m is not None and int(m.group(1)) in chosen) or any(
            pat.search(name) for pat in patterns
        )
        if p is embed:
            train = params.train_embeddings
        p.requires_grad_(train)
        n_trainable += int(train)
    if n_trainable == 0:
        raise StropError("method (freeze): no parameter matches; nothing would train")
    return model
