"""Prefix tuning (Li & Liang, 2021): trainable key/value vectors for ``virtual_tokens``
positions at every attention layer, which every real token attends to; the model stays frozen.

Through peft's PrefixTuningConfig (adapter: a standard peft PREFIX_TUNING dir). ``projection``
is the paper's reparametrisation: the prefix comes from a small embedding through a two-layer
MLP (peft's ``prefix_projection``), which the paper found more stable to train; peft saves the
MLP's output, so the saved adapter has the same shape either way.
"""

from __future__ import annotations

from strop.config.methods import PrefixMethod
from strop.models.prompt_learning import wrap


def apply(model, params: PrefixMethod):
    from peft import PrefixTuningConfig

    cfg = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=params.virtual_tokens,
        prefix_projection=params.projection,
        encoder_hidden_size=params.projection_hidden,
    )
    return wrap(model, cfg, "prefix")
