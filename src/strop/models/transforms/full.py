"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from strop.config.methods import FullMethod


def apply(model, params: FullMethod):
    for p in model.parameters():
        p.requires_grad_(True)
    return model
