"""Per-tensor parameters: constants, gradients over layers, and name-pattern rules.

A value in the merge config is a number, a list of numbers (a gradient from the first layer
to the last, linearly interpolated: ``[0, 1]`` goes 0 → 1 across the depth), or a list of
``{pattern, value}`` rules tried in order on the tensor name (first match wins). Tensors
outside the layer stack sit at its ends: embeddings at the first layer, everything else
(final norm, LM head) at the last.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from strop.errors import StropError
from strop.merge.config import MergeConfig, Rule, Value
from strop.merge.methods import TensorParams

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def layer_position(name: str, n_layers: int) -> float:
    """Where a tensor sits in depth, 0 (first layer, embeddings) .. 1 (last layer, head)."""
    m = _LAYER.search(name)
    if m is None:
        return 0.0 if "embed" in name or name.endswith("wte.weight") else 1.0
    if n_layers <= 1:
        return 0.0
    return min(int(m.group(1)), n_layers - 1) / (n_layers - 1)


def interpolate(points: list[float], x: float) -> float:
    """Piecewise-linear value at x ∈ [0, 1] over evenly spaced anchor points."""
    if len(points) == 1:
        return points[0]
    pos = x * (len(points) - 1)
    i = min(int(pos), len(points) - 2)
    frac = pos - i
    return points[i] + frac * (points[i + 1] - points[i])


def resolve_value(value: Value, name: str, n_layers: int, key: str) -> float:
    """The number ``value`` gives tensor ``name``; ``key`` names the config entry in errors."""
    if isinstance(value, int | float):
        return float(value)
    if value and isinstance(value[0], Rule):
        for rule in value:
            if fnmatchcase(name, rule.pattern):
                return resolve_value(rule.value, name, n_layers, key)
        raise StropError(
            f"{key}: no rule matches tensor {name!r}; add a last rule without a pattern"
        )
    if not value:
        raise StropError(f"{key}: empty list")
    return interpolate([float(v) for v in value], layer_position(name, n_layers))


class ParamResolver:
    """Resolves every per-tensor parameter of a merge config for one tensor name."""

    def __init__(self, cfg: MergeConfig, n_layers: int) -> None:
        self.cfg = cfg
        self.n_layers = n_layers

    def __call__(self, name: str, n_inputs: int | None = None) -> TensorParams:
        cfg, L = self.cfg, self.n_layers
        models = cfg.models
        if n_inputs is not None and n_inputs != len(models):  # checkpoint_average: k inputs
            weights = densities = (1.0,) * n_inputs
        else:
            weights = tuple(
                resolve_value(m.weight, name, L, f"models.{i}.weight") for i, m in enumerate(models)
            )
            densities = tuple(
                resolve_value(m.density, name, L, f"models.{i}.density")
                for i, m in enumerate(models)
            )
        for i, d in enumerate(densities):
            if not 0.0 <= d <= 1.0:
                raise StropError(f"models.{i}.density: {d} for tensor {name!r} is not in [0, 1]")
        t = resolve_value(cfg.params.t, name, L, "params.t")
        return TensorParams(
            weights=weights,
            densities=densities,
            t=t,
            normalize=cfg.params.normalize,
            scale=cfg.params.scale,
            dot_threshold=cfg.params.dot_threshold,
            seed=cfg.params.seed,
            name=name,
        )
