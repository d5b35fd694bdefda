"""Stage ppo's per-token maths against a plain-Python, one-token-at-a-time reference written
from the definitions (InstructGPT-style KL-shaped rewards, GAE, whitening, clipped policy and
value losses): values and gradients."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from strop.train.objectives.ppo import ppo_advantages, ppo_token_loss

LENGTHS = [3, 1, 4]


def _section(**kw):
    base = dict(
        kl_penalty="reward",
        whiten_rewards=False,
        whiten_advantages=True,
        gamma=0.9,
        lam=0.8,
        epsilon=0.2,
        value_clip=0.1,
        vf_coef=0.5,
    )
    return SimpleNamespace(**{**base, **kw})


def _ragged(rng, lo=-1.0, hi=1.0):
    return [[rng.uniform(lo, hi) for _ in range(n)] for n in LENGTHS]


def _pad(lists):
    out = torch.zeros(len(lists), max(LENGTHS), dtype=torch.float64)
    for i, x in enumerate(lists):
        out[i, : len(x)] = torch.tensor(x, dtype=torch.float64)
    return out


def _reference_advantages(scores, old, ref, values, s, beta):
    """Per completion: r_t = -beta (old_t - ref_t) [+ score at the end]; GAE by the backward
    recursion; then (optionally) whitening over every token of the batch."""
    kl_w = beta if s.kl_penalty == "reward" else 0.0
    rewards = [
        [-kl_w * (o - r) for o, r in zip(oo, rr, strict=True)]
        for oo, rr in zip(old, ref, strict=True)
    ]
    for i, sc in enumerate(scores):
        rewards[i][-1] += sc
    if s.whiten_rewards:
        flat = [x for r in rewards for x in r]
        mu = sum(flat) / len(flat)
        sd = math.sqrt(sum((x - mu) ** 2 for x in flat) / len(flat) + 1e-8)
        rewards = [[(x - mu) / sd + mu for x in r] for r in rewards]
    advs, rets = [], []
    for r, v in zip(rewards, values, strict=True):
        a, running = [0.0] * len(r), 0.0
        for t in reversed(range(len(r))):
            nxt = v[t + 1] if t + 1 < len(r) else 0.0
            running = r[t] + s.gamma * nxt - v[t] + s.gamma * s.lam * running
            a[t] = running
        advs.append(a)
        rets.append([x + y for x, y in zip(a, v, strict=True)])
    if s.whiten_advantages:
        flat = [x for a in advs for x in a]
        mu = sum(flat) / len(flat)
        sd = math.sqrt(sum((x - mu) ** 2 for x in flat) / len(flat) + 1e-8)
        advs = [[(x - mu) / sd for x in a] for a in advs]
    return rewards, advs, rets


def _reference_token_loss(lp, old, adv, v, old_v, ret, ref, s, beta):
    ratio = math.exp(lp - old)
    pg = -min(ratio * adv, min(max(ratio, 1 - s.epsilon), 1 + s.epsilon) * adv)
    v_clip = old_v + min(max(v - old_v, -s.value_clip), s.value_clip)
    vf = 0.5 * max((v - ret) ** 2, (v_clip - ret) ** 2)
    kl = 0.0
    if s.kl_penalty == "loss":
        kl = math.exp(ref - lp) - 1 - (ref - lp)
    return pg + s.vf_coef * vf + beta * kl


@pytest.mark.parametrize(
    "options",
    [{}, {"whiten_rewards": True}, {"kl_penalty": "loss"}, {"whiten_advantages": False}],
)
def test_advantages_and_loss_match_a_per_token_reference(options):
    s, beta, rng = _section(**options), 0.07, random.Random(0)
    scores = [0.9, -0.3, 0.4]
    old, ref, values = _ragged(rng, -3, -0.5), _ragged(rng, -3, -0.5), _ragged(rng)
    mask = _pad([[1.0] * n for n in LENGTHS])
    rewards, adv, ret, kl = ppo_advantages(
        torch.tensor(scores, dtype=torch.float64), _pad(old), _pad(ref), _pad(values), mask, s, beta
    )
    want_r, want_a, want_ret = _reference_advantages(scores, old, ref, values, s, beta)
    for i, n in enumerate(LENGTHS):
        assert rewards[i, :n].tolist() == pytest.approx(want_r[i], abs=1e-9)
        assert adv[i, :n].tolist() == pytest.approx(want_a[i], abs=1e-9)
        assert ret[i, :n].tolist() == pytest.approx(want_ret[i], abs=1e-9)
        assert kl[i, :n].tolist() == pytest.approx(
            [o - r for o, r in zip(old[i], ref[i], strict=True)]
        )
    assert (rewards * (1 - mask)).abs().sum() == 0 and (adv * (1 - mask)).abs().sum() == 0

    # Now the loss, at a policy that moved: ratios and value changes inside and outside the clips.
    lp = [[o + rng.uniform(-0.5, 0.5) for o in row] for row in old]
    v_new = [[x + rng.uniform(-0.3, 0.3) for x in row] for row in values]
    lp_t = _pad(lp).requires_grad_(True)
    v_t = _pad(v_new).requires_grad_(True)
    loss, clipped, v_clipped, _ = ppo_token_loss(
        lp_t, _pad(old), adv, v_t, _pad(values), ret, _pad(ref), s, beta
    )
    total = (loss * mask).sum()
    total.backward()
    ref_total, eps = 0.0, 1e-6
    for i, n in enumerate(LENGTHS):
        for t in range(n):
            args = (
                lp[i][t],
                old[i][t],
                want_a[i][t],
                v_new[i][t],
                values[i][t],
                want_ret[i][t],
                ref[i][t],
                s,
                beta,
            )
            want = _reference_token_loss(*args)
            ref_total += want
            assert loss[i, t].item() == pytest.approx(want, abs=1e-9)
            # gradients by central differences of the reference, w.r.t. log-prob and value
            d_lp = (
                _reference_token_loss(args[0] + eps, *args[1:])
                - _reference_token_loss(args[0] - eps, *args[1:])
            ) / (2 * eps)
            d_v = (
                _reference_token_loss(*args[:3], args[3] + eps, *args[4:])
                - _reference_token_loss(*args[:3], args[3] - eps, *args[4:])
            ) / (2 * eps)
            assert lp_t.grad[i, t].item() == pytest.approx(d_lp, abs=1e-6)
            assert v_t.grad[i, t].item() == pytest.approx(d_v, abs=1e-6)
    assert total.item() == pytest.approx(ref_total, abs=1e-9)
    assert 0 < clipped[mask.bool()].sum() < mask.sum()  # both sides of the policy clip tested
    assert 0 < v_clipped[mask.bool()].sum() < mask.sum()


def test_first_iteration_policy_term_is_zero_with_whitened_advantages():
    """Ratio 1 and whitened advantages (mean 0 over the batch's tokens): the token-mean policy
    loss is 0 while its gradient is not (the PPO analogue of GRPO's anchor)."""
    s, rng = _section(vf_coef=0.0), random.Random(1)
    old, values = _pad(_ragged(rng, -3, -0.5)), _pad(_ragged(rng))
    mask = _pad([[1.0] * n for n in LENGTHS])
    _, adv, ret, _ = ppo_advantages(
        torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64), old, None, values, mask, s, 0.0
    )
    lp = old.clone().requires_grad_(True)
    loss, *_ = ppo_token_loss(lp, old.detach(), adv, values, values, ret, None, s, 0.0)
    total = (loss * mask).sum() / mask.sum()
    total.backward()
    assert abs(total.item()) < 1e-12
    assert lp.grad.abs().sum() > 0.1
