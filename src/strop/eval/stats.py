"""Paired bootstrap confidence intervals for metric differences between two models.

Both models are scored on the same examples, so the examples are resampled *jointly*: each
resample draws n example indices with replacement and recomputes both models' metrics on those
same indices (Koehn 2004, "Statistical Significance Tests for Machine Translation Evaluation";
Efron & Tibshirani 1993, percentile interval). Pairing removes the between-example variance
the two columns share, which makes the interval far tighter than two independent ones.

A metric is a weighted mean of per-example scores, optionally passed through a transform:
plain accuracy is ``weights=None``; mean loss per token weights each example's mean loss by its
token count (a ratio estimator: sum of losses / sum of tokens); perplexity is ``exp`` of that.

Corpus metrics (BLEU, chrF, F1, AUC) are not means: each example carries a vector of
statistics (n-gram counts; or gold label, predicted label and label probabilities), the metric
is a ``REDUCERS`` entry (``strop.eval.reducers``) applied to all of them, and a resample
applies it with each example weighted by how often it was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from strop.eval.reducers import REDUCERS

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "exp": np.exp,
}


@dataclass
class Delta:
    """``delta`` = metric(candidate) - metric(baseline); ``lo``/``hi`` the CI bounds."""

    delta: float
    lo: float
    hi: float
    resamples: int
    confidence: float = 0.95

    def as_dict(self) -> dict:
        return {
            "delta": self.delta,
            "ci95": [self.lo, self.hi],
            "resamples": self.resamples,
        }


def aggregate(
    scores: Sequence[float], weights: Sequence[float] | None = None, transform: str = "identity"
) -> float:
    """The metric over all examples: transform(sum(w * s) / sum(w))."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return math.nan
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    total = w.sum()
    mean = (w * s).sum() / total if total > 0 else math.nan
    return float(TRANSFORMS[transform](np.float64(mean)))


def reduce_stats(stats: Sequence[Sequence[float]], reduce: str) -> float:
    """A corpus metric over all examples: ``REDUCERS[reduce]`` with every example once."""
    s = np.asarray(stats, dtype=np.float64)
    if s.size == 0:
        return math.nan
    return float(REDUCERS[reduce](s, np.ones(s.shape[0])))


def _resampled_stats(s: np.ndarray, idx: np.ndarray, reduce: str) -> np.ndarray:
    # s: [n, d] statistics, idx: [R, n] -> [R] metric values; each resample is passed as the
    # number of times it drew each example (no [R, n, d] tensor is built).
    n = s.shape[0]
    return np.array([REDUCERS[reduce](s, np.bincount(row, minlength=n)) for row in idx])


def _resampled(s: np.ndarray, w: np.ndarray, idx: np.ndarray, transform: str) -> np.ndarray:
    # idx: [R, n] example indices -> [R] metric values
    ws = w[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (ws * s[idx]).sum(axis=1) / ws.sum(axis=1)
    return TRANSFORMS[transform](means)


def paired_bootstrap(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    candidate_weights: Sequence[float] | None = None,
    transform: str = "identity",
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    reduce: str | None = None,
) -> Delta:
    """Delta of ``candidate`` over ``baseline`` with a percentile bootstrap CI.

    ``weights`` are per-example weights (e.g. target tokens); ``candidate_weights`` default to
    them (the same tokenizer gives the same counts; a different one may not). With ``reduce``
    the two score lists are per-example statistic vectors and the metric is ``REDUCERS[reduce]``
    recomputed on each resample (corpus BLEU / chrF, F1, AUC).
    """
    if reduce is not None:
        return _paired_corpus(baseline, candidate, reduce, resamples, seed, confidence)
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired bootstrap needs two equally long 1-D score lists, got {a.shape} and {b.shape}"
        )
    n = a.size
    wa = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    wb = wa if candidate_weights is None else np.asarray(candidate_weights, dtype=np.float64)
    delta = aggregate(b, wb, transform) - aggregate(a, wa, transform)
    if n == 0:
        return Delta(math.nan, math.nan, math.nan, 0, confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    diffs = _resampled(b, wb, idx, transform) - _resampled(a, wa, idx, transform)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return Delta(delta, math.nan, math.nan, resamples, confidence)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return Delta(float(delta), float(lo), float(hi), resamples, confidence)


def _paired_corpus(baseline, candidate, reduce: str, resamples: int, seed: int, confidence: float):
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"paired corpus bootstrap needs two [n, d] statistics arrays, got {a.shape} and "
            f"{b.shape}"
        )
    n = a.shape[0]
    if n == 0:
        return Delta(math.nan, math.nan, math.nan, 0, confidence)
    delta = reduce_stats(b, reduce) - reduce_stats(a, reduce)
    rng = np.random.default_rng(seed)  # the same draws as the mean path for the same seed
    idx = rng.integers(0, n, size=(resamples, n))
    diffs = _resampled_stats(b, idx, reduce) - _resampled_stats(a, idx, reduce)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return Delta(delta, math.nan, math.nan, resamples, confidence)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return Delta(float(delta), float(lo), float(hi), resamples, confidence)
