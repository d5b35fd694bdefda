"""Paired bootstrap maths and per-example generation metrics, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from strop.eval.generation import exact_match, token_f1
from strop.eval.stats import aggregate, paired_bootstrap


def test_identical_columns_give_zero_delta_and_zero_ci():
    scores = [0.0, 1.0, 0.5, 0.25, 1.0]
    d = paired_bootstrap(scores, list(scores), resamples=200)
    assert (d.delta, d.lo, d.hi) == (0.0, 0.0, 0.0)


def test_constant_shift_is_exact_whatever_the_resample():
    a = np.random.default_rng(1).random(50)
    d = paired_bootstrap(a, a + 0.3, resamples=300)
    assert d.delta == pytest.approx(0.3)
    assert d.lo == pytest.approx(0.3) and d.hi == pytest.approx(0.3)


def test_hand_computed_two_examples():
    # baseline [0, 1], candidate [1, 1]: delta = 1 - 0.5 = 0.5. A resample of two indices
    # gives baseline mean 0, 0.5 or 1 (p = 1/4, 1/2, 1/4), so the difference is 1, 0.5 or 0
    # and the 2.5/97.5 percentiles over 2000 resamples are exactly 0 and 1.
    d = paired_bootstrap([0, 1], [1, 1], resamples=2000, seed=3)
    assert d.delta == 0.5
    assert (d.lo, d.hi) == (0.0, 1.0)


def test_ci_matches_normal_theory_on_a_known_distribution():
    # Paired differences ~ N(0.1, 1): the 95% CI of the mean is 0.1 +- 1.96 / sqrt(n).
    rng = np.random.default_rng(0)
    n = 2000
    a = rng.normal(0, 1, n)
    b = a + rng.normal(0.1, 1, n)
    d = paired_bootstrap(a, b, resamples=2000, seed=0)
    diff = b - a
    se = diff.std(ddof=1) / math.sqrt(n)
    assert d.delta == pytest.approx(diff.mean())
    assert (d.hi - d.lo) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert d.lo < diff.mean() < d.hi


def test_seeded_and_reproducible():
    a, b = [0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 0, 1, 1, 1, 0, 1]
    d1 = paired_bootstrap(a, b, seed=7)
    d2 = paired_bootstrap(a, b, seed=7)
    assert d1 == d2


def test_weighted_ratio_and_exp_transform():
    # Mean loss per token: example losses 1 and 3 over 1 and 3 tokens -> (1 + 9) / 4 = 2.5.
    assert aggregate([1.0, 3.0], [1.0, 3.0]) == 2.5
    assert aggregate([1.0, 3.0], [1.0, 3.0], "exp") == pytest.approx(math.exp(2.5))
    d = paired_bootstrap([1.0, 3.0], [2.0, 4.0], weights=[1.0, 3.0], transform="exp")
    assert d.delta == pytest.approx(math.exp(3.5) - math.exp(2.5))


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 2, 3], [1, 2])


def test_exact_match_strips_whitespace():
    assert exact_match("  yes\n", "yes") == 1.0
    assert exact_match("Yes", "yes") == 0.0


def test_token_f1_squad_style():
    # pred 4 tokens, ref 3, overlap {the, cat} = 2: P = 1/2, R = 2/3, F1 = 4/7.
    assert token_f1("the cat sat down", "the cat ran") == pytest.approx(4 / 7)
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # multiset overlap: a, b
    assert token_f1("", "") == 1.0
    assert token_f1("x", "") == 0.0
    assert token_f1("x y", "z") == 0.0
