"""BitFit (Ben Zaken et al., 2022): train only the bias terms."""

from __future__ import annotations

import re

from strop.config.methods import BitFitMethod
from strop.errors import StropError


def apply(model, params: BitFitMethod):
    patterns = [re.compile(p) for p in params.also_train]
    n_bias = 0
    for name, p in model.named_parameters():
        is_bias = name.endswith(".bias")
        n_bias += int(is_bias)
        p.requires_grad_(is_bias or any(pat.search(name) for pat in patterns))
    if n_bias == 0:
        arch = type(model).__name__
        raise StropError(
            f"method (bitfit): {arch} has no bias parameters, so BitFit would train nothing; "
            "use a model with biases (e.g. Qwen2's q/k/v biases) or another method such as lora"
        )
    return model
