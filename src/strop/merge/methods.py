"""Merge methods as pure tensor functions, one parameter tensor at a time.

Every function takes the same-named tensor from each input model (``thetas``), the base
model's tensor where the method needs one, and plain numbers; it computes in fp32 and returns
the merged tensor. Nothing here reads files or knows about names beyond the seed of DARE's
random mask, so each method is testable on small hand-computed tensors.

Notation: θᵢ the i-th model's tensor, θ_b the base, τᵢ = θᵢ − θ_b its task vector, wᵢ its
weight, ρᵢ its density (the share of entries kept).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TensorParams:
    """The method parameters resolved for one tensor (after per-name rules and layer
    gradients)."""

    weights: tuple[float, ...]
    densities: tuple[float, ...]
    t: float = 0.5
    normalize: bool = True
    scale: float = 1.0
    dot_threshold: float = 0.9995
    seed: int = 0
    name: str = ""


def linear(thetas: Sequence[Tensor], weights: Sequence[float], normalize: bool = True) -> Tensor:
    """Weighted average (model soups, Wortsman et al. 2022): θ = Σ wᵢθᵢ / Σ wᵢ, or Σ wᵢθᵢ
    without normalisation."""
    out = torch.zeros_like(thetas[0], dtype=torch.float32)
    for w, theta in zip(weights, thetas, strict=True):
        out.add_(theta.float(), alpha=w)
    if normalize:
        total = math.fsum(weights)
        if total == 0:
            raise ValueError("weights sum to 0: cannot normalise")
        out.div_(total)
    return out


def task_arithmetic(base: Tensor, thetas: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic"):
    θ = θ_b + Σ λᵢ(θᵢ − θ_b), here λᵢ = wᵢ. λ = 0 returns the base exactly."""
    b = base.float()
    out = b.clone()
    for w, theta in zip(weights, thetas, strict=True):
        if w != 0:  # skip so that λ = 0 is the base bit for bit, whatever θᵢ holds
            out.add_(theta.float() - b, alpha=w)
    return out


def lerp(v0: Tensor, v1: Tensor, t: float) -> Tensor:
    """v0 + t(v1 − v0): exact when v0 = v1 (merging a model with itself is the identity),
    and at t = 0 and t = 1 (the endpoints are the inputs, bit for bit)."""
    a = v0.float()
    if t == 1:
        return v1.float().clone()
    return a + t * (v1.float() - a)


def slerp(v0: Tensor, v1: Tensor, t: float, dot_threshold: float = 0.9995) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985, "Animating rotation with quaternion
    curves"), applied to each tensor flattened to one vector:

        Ω = arccos(v̂0 · v̂1),   slerp(v0, v1; t) = sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1

    When the directions are nearly colinear (|cos Ω| > dot_threshold) sin Ω → 0 and the
    formula is numerically meaningless (parallel) or undefined (antiparallel: no unique great
    circle); as Shoemake prescribes, fall back to linear interpolation. A zero vector has no
    direction and also takes the linear path.
    """
    a, b = v0.float(), v1.float()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return lerp(a, b, t)
    cos = float(torch.dot(a.flatten() / na, b.flatten() / nb).clamp(-1.0, 1.0))
    if abs(cos) > dot_threshold:
        return lerp(a, b, t)
    omega = math.acos(cos)
    s = math.sin(omega)
    return (math.sin((1 - t) * omega) / s) * a + (math.sin(t * omega) / s) * b


def trim_by_magnitude(tau: Tensor, density: float) -> Tensor:
    """TIES step 1, *trim*: keep the k = round(ρ·n) entries of largest |τ|, zero the rest.
    Entries tied at the threshold are kept in index order, so the result is deterministic."""
    n = tau.numel()
    k = int(density * n + 0.5)
    if k >= n:
        return tau.clone()
    if k <= 0:
        return torch.zeros_like(tau)
    flat = tau.abs().flatten()
    # kthvalue is O(n), unlike a full sort: the k-th largest is the (n-k+1)-th smallest.
    threshold = torch.kthvalue(flat, n - k + 1).values
    keep = flat > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        keep[(flat == threshold).nonzero().squeeze(1)[:missing]] = True
    return torch.where(keep.view_as(tau), tau, torch.zeros((), dtype=tau.dtype))


def elect_sign(taus: Tensor, weights: Tensor) -> Tensor:
    """TIES step 2, *elect*: per entry, the sign of the total (weighted) mass,
    γ = sgn(Σᵢ wᵢ τ̂ᵢ). ``taus`` is [models, ...]. An exact tie (Σ = 0) elects 0: no input
    agrees, so that entry keeps the base value — the inputs have no consensus to add."""
    w = weights.view(-1, *([1] * (taus.dim() - 1)))
    return torch.sign((taus * w).sum(0))


def disjoint_mean(taus: Tensor, sign: Tensor, weights: Tensor) -> Tensor:
    """TIES step 3, *disjoint merge*: average only the entries whose sign agrees with the
    elected one (zeros never count), τ_m = Σ_{i∈A} wᵢτ̂ᵢ / Σ_{i∈A} wᵢ with A = {i: sgn τ̂ᵢ = γ};
    wᵢ = 1 gives the paper's mean. Entries where no input agrees are 0."""
    w = weights.view(-1, *([1] * (taus.dim() - 1)))
    agree = (torch.sign(taus) == sign) & (taus != 0)
    num = torch.where(agree, taus * w, torch.zeros((), dtype=taus.dtype)).sum(0)
    den = torch.where(agree, w.expand_as(taus), torch.zeros((), dtype=taus.dtype)).sum(0)
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)


def ties(
    base: Tensor,
    thetas: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    scale: float = 1.0,
) -> Tensor:
    """TIES-Merging (Yadav et al. 2023, "Resolving interference when merging models"):
    τ̂ᵢ = trim(θᵢ − θ_b, ρᵢ); γ = sgn(Σ wᵢτ̂ᵢ); τ_m = disjoint mean; θ = θ_b + λ·τ_m (λ = scale).
    """
    b = base.float()
    taus = torch.stack(
        [trim_by_magnitude(t.float() - b, d) for t, d in zip(thetas, densities, strict=True)]
    )
    return _sign_merge(b, taus, weights, scale)


def _sign_merge(b: Tensor, taus: Tensor, weights: Sequence[float], scale: float) -> Tensor:
    w = torch.tensor(weights, dtype=torch.float32)
    merged = disjoint_mean(taus, elect_sign(taus, w), w)
    return b + scale * merged


def dare_mask_seed(seed: int, name: str, index: int) -> int:
    """One seed per (run seed, tensor name, model): the mask of a tensor does not depend on
    the order tensors are processed in, so a streamed merge equals an in-memory one."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 101 + index) % (2**63 - 1)


def dare_drop(tau: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE (Yu et al. 2023, "Language models are super Mario"): Drop And REscale. Keep each
    entry with probability ρ (drop rate p = 1 − ρ) and rescale the survivors by 1/ρ, so that
    E[τ̃] = τ: τ̃ = m ⊙ τ / ρ with m ~ Bernoulli(ρ)."""
    if density >= 1:
        return tau.clone()
    if density <= 0:
        return torch.zeros_like(tau)
    keep = torch.rand(tau.shape, generator=generator) < density
    return torch.where(keep, tau / density, torch.zeros((), dtype=tau.dtype))


def _dare_taus(
    base: Tensor, thetas: Sequence[Tensor], densities: Sequence[float], seed: int, name: str
) -> Tensor:
    b = base.float()
    out = []
    for i, (theta, d) in enumerate(zip(thetas, densities, strict=True)):
        g = torch.Generator().manual_seed(dare_mask_seed(seed, name, i))
        out.append(dare_drop(theta.float() - b, d, g))
    return torch.stack(out)


def dare_linear(
    base: Tensor,
    thetas: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    seed: int,
    name: str,
) -> Tensor:
    """DARE then task arithmetic: θ = θ_b + Σ wᵢ τ̃ᵢ."""
    b = base.float()
    taus = _dare_taus(b, thetas, densities, seed, name)
    out = b.clone()
    for w, tau in zip(weights, taus, strict=True):
        out.add_(tau, alpha=w)
    return out


def dare_ties(
    base: Tensor,
    thetas: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    seed: int,
    name: str,
    scale: float = 1.0,
) -> Tensor:
    """DARE then TIES's sign election and disjoint mean (in place of TIES's magnitude trim):
    θ = θ_b + λ · disjoint_mean(τ̃, sgn Σ wᵢτ̃ᵢ)."""
    b = base.float()
    return _sign_merge(b, _dare_taus(b, thetas, densities, seed, name), weights, scale)


# ---- the registry: each entry adapts a pure function to the per-tensor call --------------

MergeFn = Callable[[list[Tensor], Tensor | None, TensorParams], Tensor]


@dataclass(frozen=True)
class MergeMethod:
    fn: MergeFn
    needs_base: bool
    """task vectors need θ_b: ``base:`` must name the model the inputs were tuned from."""
    n_models: int | None = None
    """slerp interpolates exactly two models; None = any number ≥ 1."""
    uses: frozenset[str] = frozenset()
    """Which of params.* and models[].{weight,density} the method reads; others are errors."""


MERGE_METHODS: dict[str, MergeMethod] = {
    "linear": MergeMethod(
        lambda th, b, p: linear(th, p.weights, p.normalize),
        needs_base=False,
        uses=frozenset({"weight", "normalize"}),
    ),
    "task_arithmetic": MergeMethod(
        lambda th, b, p: task_arithmetic(b, th, p.weights),
        needs_base=True,
        uses=frozenset({"weight"}),
    ),
    "slerp": MergeMethod(
        lambda th, b, p: slerp(th[0], th[1], p.t, p.dot_threshold),
        needs_base=False,
        n_models=2,
        uses=frozenset({"t", "dot_threshold"}),
    ),
    "ties": MergeMethod(
        lambda th, b, p: ties(b, th, p.weights, p.densities, p.scale),
        needs_base=True,
        uses=frozenset({"weight", "density", "scale"}),
    ),
    "dare_linear": MergeMethod(
        lambda th, b, p: dare_linear(b, th, p.weights, p.densities, p.seed, p.name),
        needs_base=True,
        uses=frozenset({"weight", "density", "seed"}),
    ),
    "dare_ties": MergeMethod(
        lambda th, b, p: dare_ties(b, th, p.weights, p.densities, p.seed, p.name, p.scale),
        needs_base=True,
        uses=frozenset({"weight", "density", "seed", "scale"}),
    ),
    # The mean of the last k checkpoints of one run (uniform weights): the inputs differ
    # (checkpoints, see strop.merge.checkpoints), the maths is linear's.
    "checkpoint_average": MergeMethod(
        lambda th, b, p: linear(th, [1.0] * len(th), True),
        needs_base=False,
        uses=frozenset({"last"}),
    ),
}
