"""Classification metrics (scikit-learn via the bootstrap reducers) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from strop.eval.classification import first_label, softmax
from strop.eval.reducers import auc, macro_f1, micro_f1
from strop.eval.stats import paired_bootstrap, reduce_stats


def _stats(gold, pred, probs=None):
    n_labels = 3 if probs is None else len(probs[0])
    probs = probs or [[0.0] * n_labels for _ in gold]
    return np.array([[g, p, *pr] for g, p, pr in zip(gold, pred, probs, strict=True)], float)


def test_f1_by_hand_with_an_unlabelled_answer():
    # gold 0 0 1 1 2, predicted 0 1 1 1 none(-1)
    # label 0: tp 1 fp 0 fn 1 -> F1 2/3; label 1: tp 2 fp 1 fn 0 -> F1 4/5; label 2: tp 0 -> 0
    stats = _stats([0, 0, 1, 1, 2], [0, 1, 1, 1, -1])
    ones = np.ones(5)
    assert macro_f1(stats, ones) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    # micro: tp 3, fp 1, fn 2 -> P 3/4, R 3/5 -> F1 2/3 (accuracy is 3/5: "none" is no label)
    assert micro_f1(stats, ones) == pytest.approx(2 / 3)
    assert reduce_stats(stats, "micro_f1") == pytest.approx(2 / 3)


def test_weights_are_multiplicities():
    stats = _stats([0, 0, 1, 1, 2], [0, 1, 1, 1, -1])
    dup = np.concatenate([stats, stats[:1], stats[4:], stats[4:]])
    w = np.array([2.0, 1, 1, 1, 3])
    assert macro_f1(stats, w) == pytest.approx(macro_f1(dup, np.ones(len(dup))))


def test_auc_by_hand():
    # positives score 0.35, 0.8; negatives 0.1, 0.4: 3 of 4 (pos, neg) pairs ordered -> 0.75
    probs = [[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]]
    stats = _stats([0, 0, 1, 1], [0, 0, 0, 1], probs)
    assert auc(stats, np.ones(4)) == pytest.approx(0.75)
    # three classes, one-vs-rest macro: each class separated perfectly -> 1
    probs3 = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    assert auc(_stats([0, 1, 2], [0, 1, 2], probs3), np.ones(3)) == pytest.approx(1.0)
    # a resample without one of the labels has no AUC
    assert np.isnan(auc(stats, np.array([1.0, 1, 0, 0])))


def test_bootstrap_of_f1_is_paired_and_exact_for_identical_models():
    stats = _stats([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0])
    d = paired_bootstrap(stats, stats, reduce="macro_f1", resamples=100)
    assert (d.delta, d.lo, d.hi) == (0.0, 0.0, 0.0)
    perfect = _stats([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2])
    d = paired_bootstrap(stats, perfect, reduce="macro_f1", resamples=200)
    assert d.delta == pytest.approx(1 - reduce_stats(stats, "macro_f1"))
    assert d.lo >= 0 and d.hi <= 1


def test_first_label_and_softmax():
    labels = ["good", "very good", "bad"]
    assert first_label("I think it is Very Good, not bad", labels) == 1  # longest at a tie
    assert first_label("bad, then good", labels) == 2  # earliest wins
    assert first_label("no idea", labels) is None
    assert softmax([0.0, np.log(3.0)]) == pytest.approx([0.25, 0.75])
