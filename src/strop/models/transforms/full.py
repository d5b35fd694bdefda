"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FullParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def apply(model, params: FullParams):
    for p in model.parameters():
        p.requires_grad_(True)
    return model
