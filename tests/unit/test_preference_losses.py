"""Preference losses: hand-derived values, analytic limits, and parity (values and gradients)
with straightforward reference implementations written independently here, in fp32 and fp64.
"""

from __future__ import annotations

import math

import pytest
import torch

from strop.train.objectives.dpo import DPO_LOSSES, dpo_margin
from strop.train.objectives.kto import kl_reference_point, kto_loss
from strop.train.objectives.orpo import log_odds, orpo_loss
from strop.train.objectives.simpo import simpo_loss


# ---- independent references: scalar Python maths, one pair at a time ---------------------
def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_dpo(pw, pl, rw, rl, beta, kind, eps):
    z = (pw - pl) - (rw - rl)  # regrouped: log-ratio of policy minus that of the reference
    if kind == "sigmoid":
        return -(1 - eps) * _log_sigmoid(beta * z) - eps * _log_sigmoid(-beta * z)
    if kind == "robust":
        return ((eps - 1) * _log_sigmoid(beta * z) + eps * _log_sigmoid(-beta * z)) / (1 - 2 * eps)
    if kind in ("ipo", "ipo_mean"):  # the same loss on z; ipo_mean's z is per token (below)
        return (z - 1 / (2 * beta)) ** 2
    if kind == "hinge":
        return max(0.0, 1 - beta * z)
    raise KeyError(kind)


def ref_simpo(aw, al, beta, gamma, eps):
    u = beta * aw - beta * al - gamma
    return -(1 - eps) * _log_sigmoid(u) - eps * _log_sigmoid(-u)


def ref_orpo(aw, al, lam):
    pw, pl = math.exp(aw), math.exp(al)
    odds_ratio = (pw / (1 - pw)) / (pl / (1 - pl))
    return -aw - lam * math.log(odds_ratio / (1 + odds_ratio))


def ref_kto(policy, ref, kl_p, kl_r, labels, beta, wd, wu):
    z0 = max(0.0, sum(a - b for a, b in zip(kl_p, kl_r, strict=True)) / len(kl_p))
    out = []
    for p, r, good in zip(policy, ref, labels, strict=True):
        reward = p - r
        if good:
            out.append(wd - wd / (1 + math.exp(-beta * (reward - z0))))
        else:
            out.append(wu - wu / (1 + math.exp(-beta * (z0 - reward))))
    return out


def _grad_ref(fn, xs: list[list[float]]) -> list[list[float]]:
    """Central finite differences of sum(fn(...)) in fp64 Python: gradients independent of
    autograd."""
    h = 1e-6
    grads = []
    for i, x in enumerate(xs):
        g = []
        for j in range(len(x)):
            up = [list(v) for v in xs]
            dn = [list(v) for v in xs]
            up[i][j] += h
            dn[i][j] -= h
            g.append((sum(fn(*up)) - sum(fn(*dn))) / (2 * h))
        grads.append(g)
    return grads


def _inputs(n=6, seed=0, dtype=torch.float64, scale=20.0):
    g = torch.Generator().manual_seed(seed)
    return [
        -(torch.rand(n, generator=g, dtype=torch.float64) * scale + 1).to(dtype) for _ in range(4)
    ]


# ---- DPO family ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(DPO_LOSSES))
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dpo_losses_match_reference_values_and_gradients(kind, eps, dtype):
    if kind in ("ipo", "ipo_mean", "hinge") and eps:
        pytest.skip("label smoothing does not apply")
    beta = 0.3
    pw, pl, rw, rl = _inputs(dtype=dtype)
    policy = [pw.clone().requires_grad_(), pl.clone().requires_grad_()]
    losses = DPO_LOSSES[kind](dpo_margin(policy[0], policy[1], rw, rl), beta, eps)
    losses.sum().backward()

    def fn(a, b):
        return [
            ref_dpo(x, y, u, v, beta, kind, eps)
            for x, y, u, v in zip(a, b, rw.tolist(), rl.tolist(), strict=True)
        ]

    expected = fn(pw.tolist(), pl.tolist())
    atol = 1e-6 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(
        losses.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )
    grads = _grad_ref(fn, [pw.tolist(), pl.tolist()])
    for p, g in zip(policy, grads, strict=True):
        torch.testing.assert_close(
            p.grad.double(), torch.tensor(g, dtype=torch.float64), atol=atol, rtol=0
        )


def test_dpo_hand_values():
    # z = (-1 - -2) - (-3 - -3) = 1; beta 0.5: -log s(0.5) = log(1 + e^-0.5)
    z = dpo_margin(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-3.0])
    )
    assert z.item() == 1.0
    assert DPO_LOSSES["sigmoid"](z, 0.5).item() == pytest.approx(math.log1p(math.exp(-0.5)))
    assert DPO_LOSSES["ipo"](z, 0.5).item() == pytest.approx(0.0)  # z == 1/(2 beta)
    assert DPO_LOSSES["hinge"](z, 0.5).item() == pytest.approx(0.5)
    assert DPO_LOSSES["hinge"](z, 2.0).item() == 0.0
    # robust with e=0 is plain DPO; cDPO with e=0.5 is symmetric: ln 2 + beta z / 2 + ...
    assert DPO_LOSSES["robust"](z, 0.5, 0.0).item() == pytest.approx(math.log1p(math.exp(-0.5)))


def test_dpo_policy_equal_reference_gives_ln2_for_any_beta():
    lp = _inputs()[0]
    for beta in (0.01, 0.1, 1.0, 5.0):
        z = dpo_margin(lp, lp.flip(0), lp, lp.flip(0))
        assert torch.allclose(DPO_LOSSES["sigmoid"](z, beta), torch.full_like(lp, math.log(2)))


# ---- SimPO / ORPO -------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_simpo_matches_reference(eps):
    aw, al = (x / 10 for x in _inputs()[:2])
    a = aw.clone().requires_grad_()
    b = al.clone().requires_grad_()
    simpo_loss(a, b, 2.0, 0.7, eps).sum().backward()

    def fn(x, y):
        return [ref_simpo(u, v, 2.0, 0.7, eps) for u, v in zip(x, y, strict=True)]

    torch.testing.assert_close(
        simpo_loss(aw, al, 2.0, 0.7, eps),
        torch.tensor(fn(aw.tolist(), al.tolist()), dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    ga, gb = _grad_ref(fn, [aw.tolist(), al.tolist()])
    torch.testing.assert_close(a.grad, torch.tensor(ga, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor(gb, dtype=torch.float64), atol=1e-6, rtol=0)


def test_simpo_limit_equal_averages():
    a = torch.tensor([-1.3], dtype=torch.float64)
    assert simpo_loss(a, a, 2.5, 0.8).item() == pytest.approx(math.log1p(math.exp(0.8)))


def test_orpo_matches_reference_and_limits():
    aw, al = (x / 10 for x in _inputs()[:2])  # average log-probs in (-2.1, -0.1)
    a = aw.clone().requires_grad_()
    b = al.clone().requires_grad_()
    orpo_loss(a, b, 0.25).sum().backward()

    def fn(x, y):
        return [ref_orpo(u, v, 0.25) for u, v in zip(x, y, strict=True)]

    torch.testing.assert_close(
        orpo_loss(aw, al, 0.25),
        torch.tensor(fn(aw.tolist(), al.tolist()), dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    ga, gb = _grad_ref(fn, [aw.tolist(), al.tolist()])
    torch.testing.assert_close(a.grad, torch.tensor(ga, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor(gb, dtype=torch.float64), atol=1e-6, rtol=0)
    # equal likelihoods: NLL + lambda ln 2
    x = torch.tensor([-0.7], dtype=torch.float64)
    assert orpo_loss(x, x, 0.25).item() == pytest.approx(0.7 + 0.25 * math.log(2))
    # log-odds stay finite and exact when P -> 1 (a -> 0-): log(P/(1-P)) ~ -log(-a)
    tiny = torch.tensor([-1e-12], dtype=torch.float64)
    assert log_odds(tiny).item() == pytest.approx(-1e-12 - math.log(1e-12), rel=1e-9)


# ---- KTO ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kto_matches_reference(dtype):
    policy, ref, kl_p, kl_r = _inputs(n=8, seed=3, dtype=dtype, scale=3.0)
    labels = [True, False, True, True, False, True, False, False]
    p = policy.clone().requires_grad_()
    z0 = kl_reference_point(kl_p, kl_r)
    losses = kto_loss(p, ref, z0, torch.tensor(labels), 0.5, 1.0, 1.33)
    losses.sum().backward()

    def fn(x):
        return ref_kto(x, ref.tolist(), kl_p.tolist(), kl_r.tolist(), labels, 0.5, 1.0, 1.33)

    atol = 1e-6 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(
        losses.double(), torch.tensor(fn(policy.tolist()), dtype=torch.float64), atol=atol, rtol=0
    )
    (g,) = _grad_ref(fn, [policy.tolist()])  # z0 is detached: no gradient through it
    torch.testing.assert_close(
        p.grad.double(), torch.tensor(g, dtype=torch.float64), atol=atol, rtol=0
    )


def test_kto_limits():
    x = torch.tensor([-4.0, -2.0, -3.0])
    labels = torch.tensor([True, False, True])
    z0 = kl_reference_point(x, x)
    assert z0.item() == 0.0
    # policy == reference: every example costs half its class weight
    losses = kto_loss(x, x, z0, labels, 0.1, 1.0, 3.0)
    assert losses.tolist() == pytest.approx([0.5, 1.5, 0.5])
    # the reference point is clipped at zero and carries no gradient
    kl_p = torch.tensor([-9.0, -9.0], requires_grad=True)
    z = kl_reference_point(kl_p, torch.tensor([-1.0, -1.0]))
    assert z.item() == 0.0 and not z.requires_grad


# ---- reward model -------------------------------------------------------------------------
def test_bradley_terry_matches_reference_and_limits():
    from strop.train.objectives.rm import bradley_terry_loss

    rw, rl, m, _ = _inputs(n=5, seed=9, scale=2.0)
    m = -m / 10  # margins in (0.1, 0.3)
    a = rw.clone().requires_grad_()
    b = rl.clone().requires_grad_()
    bradley_terry_loss(a, b, m, 0.05).sum().backward()

    def fn(x, y):
        return [
            math.log1p(math.exp(-(u - v - k))) + 0.05 * (u + v) ** 2
            for u, v, k in zip(x, y, m.tolist(), strict=True)
        ]

    want = torch.tensor(fn(rw.tolist(), rl.tolist()), dtype=torch.float64)
    torch.testing.assert_close(bradley_terry_loss(rw, rl, m, 0.05), want, atol=1e-6, rtol=0)
    ga, gb = _grad_ref(fn, [rw.tolist(), rl.tolist()])
    torch.testing.assert_close(a.grad, torch.tensor(ga, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor(gb, dtype=torch.float64), atol=1e-6, rtol=0)
    x = torch.tensor([0.3])
    assert bradley_terry_loss(x, x).item() == pytest.approx(math.log(2))


def test_ipo_sums_log_ratios_and_ipo_mean_averages_them_per_token():
    """strop's ipo follows the paper (sequence log-probs); ipo_mean is TRL's per-token mean.
    Pair: chosen 5 tokens, rejected 10; policy -10 / -20, reference -12 / -18; beta 0.5."""
    from types import SimpleNamespace

    from strop.train.objectives.dpo import DPOObjective

    logps = torch.tensor([[-10.0, -20.0]])
    ref = torch.tensor([[-12.0, -18.0]])
    counts = torch.tensor([[5.0, 10.0]])
    obj = DPOObjective.__new__(DPOObjective)  # compute() needs only its section
    for loss, want in (("ipo", (4.0 - 1.0) ** 2), ("ipo_mean", (0.6 - 1.0) ** 2)):
        # sum: z = (-10 + 12) - (-20 + 18) = 4; per token: z = (-2 + 2.4) - (-2 + 1.8) = 0.6
        obj.__dict__["section"] = SimpleNamespace(
            loss=loss, beta=0.5, label_smoothing=0.0, nll_weight=0.0
        )
        got, _ = obj.compute(logps, ref, counts, {})
        assert got.item() == pytest.approx(want), loss
