"""RL maths (GRPO, PPO): hand-derived values, the analytic anchor, and parity (values and
gradients) with straightforward scalar references written independently here."""

from __future__ import annotations

import math

import pytest
import torch

from strop.train.objectives.grpo import (
    GRPO_AGGREGATIONS,
    group_advantages,
    grpo_loss,
    zero_advantage_groups,
)
from strop.train.objectives.policy_gradient import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    clipped_surrogate,
    clipped_value_loss,
    gae,
    shaped_rewards,
    whiten,
)


# ---- independent references: plain Python, one completion / token at a time ---------------
def ref_advantages(rewards, g, scale, eps=1e-4):
    out = []
    for s in range(0, len(rewards), g):
        grp = rewards[s : s + g]
        mean = sum(grp) / g
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / g)
        out += [(x - mean) / (std + eps) if scale else x - mean for x in grp]
    return out


def ref_grpo(logp, old, ref, adv, lengths, beta, e_lo, e_hi, agg, max_len):
    """logp/old/ref: lists of per-completion token lists; returns the aggregated loss."""
    per_seq, n_tok = [], 0
    for lp, ol, rf, a, n in zip(logp, old, ref, adv, lengths, strict=True):
        total = 0.0
        for t in range(n):
            ratio = math.exp(lp[t] - ol[t])
            clipped = min(max(ratio, 1 - e_lo), 1 + e_hi)
            surr = min(ratio * a, clipped * a)
            kl = math.exp(rf[t] - lp[t]) - (rf[t] - lp[t]) - 1
            total += -(surr - beta * kl)
        per_seq.append((total, n))
        n_tok += n
    if agg == "sequence_mean":
        return sum(s / n for s, n in per_seq) / len(per_seq)
    if agg == "token_mean":
        return sum(s for s, _ in per_seq) / n_tok
    return sum(s for s, _ in per_seq) / (max_len * len(per_seq))


def ref_gae(rewards, values, gamma, lam):
    n = len(rewards)
    adv = [0.0] * n
    for t in range(n):  # the defining sum, not the recursion
        adv[t] = sum(
            (gamma * lam) ** k
            * (rewards[t + k] + gamma * (values[t + k + 1] if t + k + 1 < n else 0) - values[t + k])
            for k in range(n - t)
        )
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


def _fd_grad(fn, x: list[list[float]], h=1e-6):
    grads = []
    for i in range(len(x)):
        row = []
        for j in range(len(x[i])):
            up = [list(r) for r in x]
            dn = [list(r) for r in x]
            up[i][j] += h
            dn[i][j] -= h
            row.append((fn(up) - fn(dn)) / (2 * h))
        grads.append(row)
    return grads


# ---- advantages ---------------------------------------------------------------------------
def test_group_advantages_hand_values():
    r = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    # group [0, 1]: mean .5, population std .5 -> -1, +1 (eps aside)
    a = group_advantages(r[:2], 2, eps=0.0)
    assert a.tolist() == [-1.0, 1.0]
    # group of 3: [1, 2, 2], mean 5/3, std sqrt(2)/3
    a = group_advantages(r[3:], 3, eps=0.0)
    want = [(x - 5 / 3) / (math.sqrt(2) / 3) for x in (1, 2, 2)]
    assert a.tolist() == pytest.approx(want, rel=1e-6)
    assert group_advantages(r[3:], 3, scale=False).tolist() == pytest.approx([-2 / 3, 1 / 3, 1 / 3])
    # all-equal group: zero advantage, flagged
    assert group_advantages(torch.ones(4), 4).tolist() == [0.0] * 4
    assert zero_advantage_groups(r, 2).tolist() == [False, True, True]  # [0,1] [1,1] [2,2]


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_reference(scale):
    g = torch.Generator().manual_seed(1)
    r = torch.rand(12, generator=g, dtype=torch.float64)
    got = group_advantages(r, 4, scale)
    want = ref_advantages(r.tolist(), 4, scale)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


# ---- GRPO loss ------------------------------------------------------------------------------
def _rollout(seed=0, b=4, t=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 3, 1, 4][:b]
    mask = torch.zeros(b, t, dtype=dtype)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64).to(dtype) * 3
    old = logp + (torch.rand(b, t, generator=g, dtype=torch.float64).to(dtype) - 0.5) * 0.6
    ref = logp + (torch.rand(b, t, generator=g, dtype=torch.float64).to(dtype) - 0.5)
    adv = torch.tensor([1.2, -0.7, 0.4, -0.9], dtype=dtype)[:b]
    return logp, old, ref, adv, mask, lengths


@pytest.mark.parametrize("agg", sorted(GRPO_AGGREGATIONS))
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grpo_loss_matches_reference_values_and_gradients(agg, beta, dtype):
    logp, old, ref, adv, mask, lengths = _rollout(dtype=dtype)
    e_lo, e_hi, max_len = 0.2, 0.28, 8
    x = logp.clone().requires_grad_()
    loss = grpo_loss(x, old, ref, adv, mask, beta, e_lo, e_hi, agg, max_len)
    loss.backward()

    def fn(lp):
        return ref_grpo(
            lp, old.tolist(), ref.tolist(), adv.tolist(), lengths, beta, e_lo, e_hi, agg, max_len
        )

    atol = 1e-9 if dtype == torch.float64 else 1e-5
    assert loss.item() == pytest.approx(fn(logp.tolist()), abs=atol)
    want = torch.tensor(_fd_grad(fn, logp.tolist()), dtype=torch.float64) * mask.double()
    torch.testing.assert_close(x.grad.double(), want, atol=max(atol, 1e-7), rtol=0)


def test_one_iteration_beta0_sequence_mean_loss_is_zero_but_gradient_is_not():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 11, (4, 6), generator=g)
    mask = torch.ones(4, 6, dtype=torch.float64)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    logp = logits.log_softmax(-1).gather(2, tokens[..., None])[..., 0]
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64), 4)
    loss = grpo_loss(logp, logp.detach(), None, adv, mask, 0.0, 0.2, None, "sequence_mean")
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert logits.grad.abs().max() > 1e-3
    # token_mean is not zero here: the completions differ in length
    tm = grpo_loss(logp, logp.detach(), None, adv, mask, 0.0, 0.2, None, "token_mean")
    assert abs(tm.item()) > 1e-3


def test_aggregation_hand_values():
    # two completions, per-token losses known: ratio 1, beta 0 -> l = -A on each token
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss = {
        k: grpo_loss(logp, logp, None, adv, mask, 0.0, 0.2, None, k, 4).item()
        for k in GRPO_AGGREGATIONS
    }
    assert loss["sequence_mean"] == pytest.approx((-1 + 2) / 2)  # per-seq means -1, +2
    assert loss["token_mean"] == pytest.approx((-3 + 2) / 4)
    assert loss["dr_grpo"] == pytest.approx((-3 + 2) / (2 * 4))


def test_clipped_surrogate_hand_values():
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    s, active = clipped_surrogate(lp, old, adv, 0.2)
    # r=1.5, A>0: clipped to 1.2; r=0.5, A>0: min(0.5, 0.8) = 0.5 (pessimistic, unclipped)
    # r=1.1, A<0: -1.1 (inside); r=0.7, A<0: min(-0.7, -0.8) = -0.8 clipped
    assert s[0].tolist() == pytest.approx([1.2, 0.5, -1.1, -0.8], rel=1e-6)
    assert active[0].tolist() == [1.0, 0.0, 0.0, 1.0]


# ---- KL estimators ------------------------------------------------------------------------
def test_kl_estimators_hand_values_and_unbiasedness():
    lp, rf = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # l = log(ref/pi) = -ln 2
    assert KL_ESTIMATORS["k1"](lp, rf).item() == pytest.approx(math.log(2))
    assert KL_ESTIMATORS["k2"](lp, rf).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert KL_ESTIMATORS["k3"](lp, rf).item() == pytest.approx(0.5 - 1 + math.log(2))
    # expectation under pi of k1 and k3 equals the exact KL(pi || ref) on a 3-outcome space
    p = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    exact = (p * (p / q).log()).sum()
    for k in ("k1", "k3"):
        est = (p * KL_ESTIMATORS[k](p.log(), q.log())).sum()
        assert est.item() == pytest.approx(exact.item(), rel=1e-12)
    assert (KL_ESTIMATORS["k3"](torch.randn(50), torch.randn(50)) >= 0).all()


# ---- PPO pieces ----------------------------------------------------------------------------
def test_gae_hand_values():
    # one step: A = r - V; two steps with g=l=1: A0 = r0 + r1 - V0
    adv, ret = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2), 1, 1)
    assert adv[0].tolist() == pytest.approx([2.5, 1.75])
    assert ret[0].tolist() == pytest.approx([3.0, 2.0])
    # l = 0: one-step TD residuals
    adv, _ = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2), 0.5, 0)
    assert adv[0].tolist() == pytest.approx([1 + 0.5 * 0.25 - 0.5, 2 - 0.25])


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_matches_reference_with_padding(gamma, lam):
    g = torch.Generator().manual_seed(2)
    r = torch.randn(3, 6, generator=g, dtype=torch.float64)
    v = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 6, dtype=torch.float64)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    adv, ret = gae(r, v, mask, gamma, lam)
    for i, n in enumerate((6, 4, 1)):
        a, rt = ref_gae(r[i, :n].tolist(), v[i, :n].tolist(), gamma, lam)
        assert adv[i, :n].tolist() == pytest.approx(a, abs=1e-12)
        assert ret[i, :n].tolist() == pytest.approx(rt, abs=1e-12)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_clipped_value_loss_hand_values_and_gradient():
    v = torch.tensor([[1.0, 0.0, 3.0]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 0.0]])
    ret = torch.tensor([[2.0, 1.0, 0.0]])
    loss = clipped_value_loss(v, old, ret, 0.2)
    # v=1: max((1-2)^2, (0.2-2)^2)=3.24; v=0: max(1, 1)=1; v=3: max(9, (0.2)^2)=9
    assert loss[0].tolist() == pytest.approx([1.62, 0.5, 4.5])
    loss.sum().backward()
    # the clipped branch is active at v=1 (constant in v): zero gradient there
    assert v.grad[0].tolist() == pytest.approx([0.0, -1.0, 3.0])


def test_whiten_and_shaping_and_kl_controller():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert w[0, :3].tolist() == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4)
    assert w[0, 3] == 0
    assert whiten(x, mask, shift_mean=False)[0, :3].mean().item() == pytest.approx(2.0)
    r = shaped_rewards(torch.tensor([5.0]), torch.tensor([[0.1, 0.2, 0.3, 9.0]]), mask, 0.5)
    assert r[0].tolist() == pytest.approx([-0.05, -0.1, -0.15 + 5.0, 0.0])
    kl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert kl.update(12.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))  # clipped at +0.2
    assert kl.update(6.0, 10) == pytest.approx(0.1 * 1.02)  # on target: unchanged


def test_group_advantages_population_or_sample_std():
    """Population std (the paper's, strop's default) vs sample std (TRL's): at G = 4 with
    rewards 1, 0, 0, 0 the stds are sqrt(3)/4 and 1/2, so advantages differ by 2/sqrt(3)."""
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    pop = group_advantages(r, 4, eps=0.0)
    sample = group_advantages(r, 4, eps=0.0, std="sample")
    torch.testing.assert_close(pop, (r - 0.25) / (3**0.5 / 4))
    torch.testing.assert_close(sample, (r - 0.25) / 0.5)
    torch.testing.assert_close(pop / sample, torch.full((4,), 2 / 3**0.5, dtype=torch.float64))
