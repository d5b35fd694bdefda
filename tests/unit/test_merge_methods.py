"""Merge methods against hand-computed results on small tensors, plus identity properties."""

from __future__ import annotations

import math

import pytest
import torch

from strop.merge.methods import (
    MERGE_METHODS,
    TensorParams,
    dare_drop,
    dare_linear,
    dare_mask_seed,
    dare_ties,
    disjoint_mean,
    elect_sign,
    kth_largest_abs,
    linear,
    slerp,
    task_arithmetic,
    ties,
    trim_by_magnitude,
)


def T(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# ---- linear / task arithmetic -------------------------------------------------------------


def test_linear_weighted_average_by_hand():
    # (1·[1,2] + 3·[3,6]) / 4 = [2.5, 5]
    close(linear([T(1, 2), T(3, 6)], [1, 3]), T(2.5, 5))


def test_linear_without_normalisation_is_the_weighted_sum():
    close(linear([T(1, 2), T(3, 6)], [1, 3], normalize=False), T(10, 20))


def test_linear_refuses_weights_summing_to_zero():
    with pytest.raises(ValueError, match="sum to 0"):
        linear([T(1), T(2)], [1, -1])


def test_task_arithmetic_by_hand():
    # base [1,1] + 1·([2,3]−[1,1]) + 0.5·([0,1]−[1,1]) = [1.5, 3]
    close(task_arithmetic(T(1, 1), [T(2, 3), T(0, 1)], [1, 0.5]), T(1.5, 3))


def test_task_arithmetic_lambda_zero_is_the_base_bit_for_bit():
    base = torch.randn(7, 5)
    thetas = [torch.randn(7, 5) * 1e6, torch.randn(7, 5)]
    out = task_arithmetic(base, thetas, [0.0, 0.0])
    assert torch.equal(out, base)


# ---- SLERP -------------------------------------------------------------------------------


def test_slerp_orthogonal_unit_vectors_by_hand():
    # Ω = π/2, sin Ω = 1: both coefficients sin(π/4) = √2/2
    h = math.sqrt(2) / 2
    close(slerp(T(1, 0), T(0, 1), 0.5), T(h, h))
    close(slerp(T(1, 0), T(0, 1), 0.0), T(1, 0))
    close(slerp(T(1, 0), T(0, 1), 1.0), T(0, 1))


def test_slerp_third_of_the_way_by_hand():
    # Ω = π/2, t = 1/3: coefficients sin(π/3), sin(π/6) -> [√3/2, 1/2], still unit norm
    out = slerp(T(1, 0), T(0, 1), 1 / 3)
    close(out, T(math.sqrt(3) / 2, 0.5))
    assert abs(float(out.norm()) - 1) < 1e-6


def test_slerp_uses_the_raw_vectors_not_their_directions():
    # v0 = [2,0], v1 = [0,1]: Ω = π/2, coefficients √2/2 on the raw vectors
    h = math.sqrt(2) / 2
    close(slerp(T(2, 0), T(0, 1), 0.5), T(2 * h, h))


def test_slerp_colinear_falls_back_to_linear():
    # parallel: cos Ω = 1 -> lerp: [1,2] + 0.25·([2,4]−[1,2]) = [1.25, 2.5]
    close(slerp(T(1, 2), T(2, 4), 0.25), T(1.25, 2.5))
    # antiparallel: no unique great circle -> lerp through 0
    close(slerp(T(1, 0), T(-1, 0), 0.5), T(0, 0))
    # nearly colinear (cos Ω ≈ 0.99999 > 0.9995): linear, not the ill-conditioned formula
    v1 = T(1.0, 0.004)
    close(slerp(T(1, 0), v1, 0.5), (T(1, 0) + v1) / 2)
    # a zero vector has no direction
    close(slerp(T(0, 0), T(2, 2), 0.5), T(1, 1))


def test_slerp_threshold_decides_the_fallback():
    v0, v1 = T(1, 0), T(1, 1)  # cos Ω = 0.7071
    arc = slerp(v0, v1, 0.5, dot_threshold=0.9)
    assert not torch.allclose(arc, (v0 + v1) / 2)
    close(slerp(v0, v1, 0.5, dot_threshold=0.7), (v0 + v1) / 2)


# ---- TIES ----------------------------------------------------------------------------------


def test_trim_keeps_the_largest_magnitudes():
    close(trim_by_magnitude(T(0.1, -0.5, 0.3, -0.2), 0.5), T(0, -0.5, 0.3, 0))
    close(trim_by_magnitude(T(0.1, -0.5, 0.3, -0.2), 1.0), T(0.1, -0.5, 0.3, -0.2))
    close(trim_by_magnitude(T(0.1, -0.5, 0.3, -0.2), 0.0), T(0, 0, 0, 0))
    # round(0.3·4) = 1 entry
    close(trim_by_magnitude(T(0.1, -0.5, 0.3, -0.2), 0.3), T(0, -0.5, 0, 0))


def test_trim_breaks_magnitude_ties_by_index():
    # three entries tie at |1| for two slots: the first two by index are kept
    close(trim_by_magnitude(T(1, -1, 1, 0.5), 0.5), T(1, -1, 0, 0))


def test_kth_largest_abs_matches_a_sort():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * torch.rand(1000, generator=g).lt(0.7)  # with zeros
    ranked = x.abs().sort(descending=True).values
    for k in (1, 2, 17, 500, 699, 700, 701, 1000):
        assert kth_largest_abs(x, k) == ranked[k - 1], k


def test_trim_matches_a_sorting_reference_on_random_tensors():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 11, generator=g).round(decimals=1)  # many magnitude ties
    for density in (0.1, 0.33, 0.5, 0.9):
        k = int(density * x.numel() + 0.5)
        order = torch.argsort(x.abs().flatten(), descending=True, stable=True)[:k]
        ref = torch.zeros(x.numel())
        ref[order] = x.flatten()[order]
        assert torch.equal(trim_by_magnitude(x, density), ref.view_as(x)), density


def test_elect_sign_and_disjoint_mean_by_hand():
    taus = torch.stack([T(1, -2, 3, 1), T(-2, 1, -3, 0)])
    w = T(1, 1)
    sign = elect_sign(taus, w)
    close(sign, T(-1, -1, 0, 1))  # sums -1, -1, 0 (a tie), 1
    # entry 2 is a tie: no sign elected, nobody agrees, the base is kept (0)
    # entry 3: the zero of model 2 does not count towards the mean
    close(disjoint_mean(taus, sign, w), T(-2, -2, 0, 1))


def test_ties_by_hand_with_trimming():
    base = T(0, 0, 0, 0)
    # trimmed at density 0.5: [0,-2,3,0] and [-2,0,-3,0]; sums [-2,-2,0,0]
    out = ties(base, [T(1, -2, 3, 1), T(-2, 1, -3, 0)], [1, 1], [0.5, 0.5])
    close(out, T(-2, -2, 0, 0))


def test_ties_weights_enter_the_election_and_the_mean():
    base = T(0, 0, 0, 0)
    # weighted sums [1,-5,6,3]: model 0's signs win everywhere
    out = ties(base, [T(1, -2, 3, 1), T(-2, 1, -3, 0)], [3, 1], [1, 1])
    close(out, T(1, -2, 3, 1))
    # both agree: weighted mean (1·2 + 3·4) / 4 = 3.5, plus the base, times λ = 2
    close(ties(T(1), [T(3), T(5)], [1, 3], [1, 1], scale=2.0), T(1 + 2 * 3.5))


# ---- DARE ----------------------------------------------------------------------------------


def test_dare_is_deterministic_by_seed_name_and_model():
    base = torch.zeros(1000)
    thetas = [torch.randn(1000, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    a = dare_linear(base, thetas, [1, 1], [0.4, 0.4], seed=7, name="w")
    b = dare_linear(base, thetas, [1, 1], [0.4, 0.4], seed=7, name="w")
    assert torch.equal(a, b)
    assert not torch.equal(a, dare_linear(base, thetas, [1, 1], [0.4, 0.4], seed=8, name="w"))
    assert not torch.equal(a, dare_linear(base, thetas, [1, 1], [0.4, 0.4], seed=7, name="v"))
    assert dare_mask_seed(7, "w", 0) != dare_mask_seed(7, "w", 1)


def test_dare_rescale_keeps_the_expected_value():
    tau = torch.full((200_000,), 2.0)
    out = dare_drop(tau, 0.3, torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.005
    assert torch.allclose(out[kept], torch.tensor(2.0 / 0.3))
    assert abs(out.mean().item() - 2.0) < 0.03  # E[m·τ/ρ] = τ


def test_dare_density_one_is_task_arithmetic_and_ties():
    base = torch.randn(50)
    thetas = [torch.randn(50), torch.randn(50)]
    close(
        dare_linear(base, thetas, [0.7, 0.3], [1, 1], 0, "x"),
        task_arithmetic(base, thetas, [0.7, 0.3]),
    )
    close(dare_ties(base, thetas, [1, 1], [1, 1], 0, "x"), ties(base, thetas, [1, 1], [1, 1]))


def test_dare_ties_by_hand():
    # density 1 keeps everything: the TIES example above
    out = dare_ties(T(0, 0, 0, 0), [T(1, -2, 3, 1), T(-2, 1, -3, 0)], [1, 1], [1, 1], 0, "x")
    close(out, T(-2, -2, 0, 1))


# ---- identities through the registry -------------------------------------------------------


def _params(n: int, **kw) -> TensorParams:
    return TensorParams(weights=(1.0,) * n, densities=(1.0,) * n, name="w", **kw)


@pytest.mark.parametrize("method", ["linear", "slerp", "ties", "dare_ties", "task_arithmetic"])
def test_merging_a_model_with_itself_is_the_identity(method):
    theta = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    base = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    m = MERGE_METHODS[method]
    params = _params(2, t=0.3)
    if method == "task_arithmetic":  # Σλᵢ = 1 over two copies of the same task vector
        params = TensorParams(weights=(0.5, 0.5), densities=(1.0, 1.0), name="w")
    out = m.fn([theta, theta.clone()], base if m.needs_base else None, params)
    close(out, theta, atol=1e-6)


def test_slerp_of_a_model_with_itself_is_exact():
    theta = torch.randn(64)
    assert torch.equal(slerp(theta, theta.clone(), 0.37), theta)


def test_ties_with_the_model_as_base_returns_it():
    theta = torch.randn(10)
    assert torch.equal(ties(theta, [theta.clone(), theta.clone()], [1, 1], [0.5, 0.5]), theta)
