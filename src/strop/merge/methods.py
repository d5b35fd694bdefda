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
from collections.abc import Callable, Iterator, Sequence
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
    cos = max(-1.0, min(1.0, float(torch.dot(a.flatten(), b.flatten()) / (na * nb))))
    if abs(cos) > dot_threshold:
        return lerp(a, b, t)
    omega = math.acos(cos)
    s = math.sin(omega)
    return torch.add(a * (math.sin((1 - t) * omega) / s), b, alpha=math.sin(t * omega) / s)


def kth_largest_abs(tau: Tensor, k: int) -> Tensor:
    """The k-th largest |τ| (1 ≤ k ≤ n), exactly, without sorting."""
    return _kth_largest(tau.float().abs(), k)


def _kth_largest(magnitude: Tensor, k: int) -> Tensor:
    """Bisection on the bit pattern of non-negative floats (their integer order is their value
    order): ≤ 32 comparison passes, memory one bool mask, where kthvalue/topk would copy the
    tensor and allocate 8-byte indices for every entry."""
    bits = magnitude.view(torch.int32)
    lo, hi = 0, int(bits.max())
    while lo < hi:  # invariant: count(bits >= lo) >= k, count(bits > hi) < k
        mid = (lo + hi + 1) // 2
        if int(torch.count_nonzero(bits >= mid)) >= k:
            lo = mid
        else:
            hi = mid - 1
    return torch.tensor(lo, dtype=torch.int32).view(torch.float32)


def _trim_(tau: Tensor, density: float) -> Tensor:
    """trim_by_magnitude in place on an fp32 tensor the caller owns."""
    n = tau.numel()
    k = int(density * n + 0.5)
    if k >= n:
        return tau
    if k <= 0:
        return tau.zero_()
    magnitude = tau.abs()
    threshold = _kth_largest(magnitude, k)
    keep = magnitude > threshold
    missing = k - int(keep.sum())
    if missing > 0 and threshold > 0:  # at a zero threshold the tied entries are zeros anyway
        tied = (magnitude == threshold).view(-1).nonzero().squeeze(1)[:missing]
        keep.view(-1)[tied] = True
    del magnitude
    return tau.mul_(keep)


def trim_by_magnitude(tau: Tensor, density: float) -> Tensor:
    """TIES step 1, *trim*: keep the k = round(ρ·n) entries of largest |τ|, zero the rest.
    Entries tied at the threshold are kept in index order, so the result is deterministic."""
    return _trim_(tau.float().clone(), density)


def elect_sign(taus: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """TIES step 2, *elect*: per entry, the sign of the total (weighted) mass,
    γ = sgn(Σᵢ wᵢ τ̂ᵢ). An exact tie (Σ = 0) elects 0: no input agrees, so that entry keeps
    the base value — the inputs have no consensus to add."""
    acc = torch.zeros_like(taus[0], dtype=torch.float32)
    for w, tau in zip(weights, taus, strict=True):
        acc.add_(tau, alpha=float(w))
    return acc.sign_()


def disjoint_mean(taus: Sequence[Tensor], sign: Tensor, weights: Sequence[float]) -> Tensor:
    """TIES step 3, *disjoint merge*: average only the entries whose sign agrees with the
    elected one (zeros never count), τ_m = Σ_{i∈A} wᵢτ̂ᵢ / Σ_{i∈A} wᵢ with A = {i: sgn τ̂ᵢ = γ};
    wᵢ = 1 gives the paper's mean. Entries where no input agrees are 0."""
    num = torch.zeros_like(sign)
    den = torch.zeros_like(sign)
    for w, tau in zip(weights, taus, strict=True):
        agree = torch.mul(tau, sign).gt_(0)  # 1.0 where the signs match and τ̂ᵢ ≠ 0
        num.addcmul_(tau, agree, value=float(w))
        den.add_(agree, alpha=float(w))
        del agree
    return num.div_(den.masked_fill_(den == 0, 1.0))  # num is 0 wherever den was


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
    taus = [_trim_(t.float() - b, d) for t, d in zip(thetas, densities, strict=True)]
    return _sign_merge(b, taus, weights, scale)


def _sign_merge(b: Tensor, taus: list[Tensor], weights: Sequence[float], scale: float) -> Tensor:
    merged = disjoint_mean(taus, elect_sign(taus, weights), weights)
    del taus[:]  # the caller's list: free the task vectors before the last addition
    return merged.mul_(scale).add_(b)


def dare_mask_seed(seed: int, name: str, index: int) -> int:
    """One seed per (run seed, tensor name, model): the mask of a tensor does not depend on
    the order tensors are processed in, so a streamed merge equals an in-memory one."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 101 + index) % (2**63 - 1)


def _dare_drop_(tau: Tensor, density: float, generator: torch.Generator) -> Tensor:
    if density >= 1:
        return tau
    if density <= 0:
        return tau.zero_()
    drop = torch.rand(tau.shape, generator=generator).ge_(density).bool()
    return tau.masked_fill_(drop, 0.0).div_(density)


def dare_drop(tau: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE (Yu et al. 2023, "Language models are super Mario"): Drop And REscale. Keep each
    entry with probability ρ (drop rate p = 1 − ρ) and rescale the survivors by 1/ρ, so that
    E[τ̃] = τ: τ̃ = m ⊙ τ / ρ with m ~ Bernoulli(ρ)."""
    return _dare_drop_(tau.float().clone(), density, generator)


def _dare_taus(
    base: Tensor, thetas: Sequence[Tensor], densities: Sequence[float], seed: int, name: str
) -> Iterator[Tensor]:
    """The DARE-dropped, rescaled task vectors, one at a time (a generator: callers that can
    fold them in as they come never hold all of them)."""
    b = base.float()
    for i, (theta, d) in enumerate(zip(thetas, densities, strict=True)):
        g = torch.Generator().manual_seed(dare_mask_seed(seed, name, i))
        yield _dare_drop_(theta.float() - b, d, g)


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
    out = b.clone()
    for w, tau in zip(weights, _dare_taus(b, thetas, densities, seed, name), strict=True):
        out.add_(tau, alpha=w)  # one task vector at a time
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
    return _sign_merge(b, list(_dare_taus(b, thetas, densities, seed, name)), weights, scale)


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
