"""Corpus metrics: (per-example statistics [n, d], example multiplicities [n]) -> one value.

BLEU and chrF sum sacrebleu's n-gram counts (``text_metrics``); a classification example
carries [gold, predicted, p_0 .. p_L-1] and F1 / AUC are scikit-learn's, sample-weighted. A
bootstrap resample passes how often it drew each example, so non-decomposable metrics are
recomputed on the resampled set (``stats``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from strop.eval.text_metrics import corpus_bleu, corpus_chrf


def _corpus_bleu(stats: np.ndarray, weights: np.ndarray) -> float:
    return corpus_bleu(weights @ stats)


def _corpus_chrf(stats: np.ndarray, weights: np.ndarray) -> float:
    return corpus_chrf(weights @ stats)


def split_label_stats(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gold labels [n], predicted labels [n], label probabilities [n, L]) of classification
    statistics rows [gold, predicted, p_0 .. p_L-1]; a predicted label of -1 named none."""
    return stats[:, 0].astype(int), stats[:, 1].astype(int), stats[:, 2:]


def macro_f1(stats: np.ndarray, weights: np.ndarray) -> float:
    from sklearn.metrics import f1_score  # with scipy, > 1 s to import: only when used

    gold, pred, probs = split_label_stats(stats)
    labels = list(range(probs.shape[1]))
    return float(
        f1_score(gold, pred, labels=labels, average="macro", sample_weight=weights, zero_division=0)
    )


def micro_f1(stats: np.ndarray, weights: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    gold, pred, probs = split_label_stats(stats)
    labels = list(range(probs.shape[1]))
    return float(
        f1_score(gold, pred, labels=labels, average="micro", sample_weight=weights, zero_division=0)
    )


def auc(stats: np.ndarray, weights: np.ndarray) -> float:
    """One-vs-rest macro ROC AUC; NaN when a label never occurs (AUC is undefined)."""
    from sklearn.metrics import roc_auc_score

    gold, _, probs = split_label_stats(stats)
    present = np.unique(gold[weights > 0])
    if len(present) < probs.shape[1]:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(gold, probs[:, 1], sample_weight=weights))
    return float(
        roc_auc_score(
            gold,
            probs,
            multi_class="ovr",
            average="macro",
            labels=list(range(probs.shape[1])),
            sample_weight=weights,
        )
    )


REDUCERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "bleu": _corpus_bleu,
    "chrf": _corpus_chrf,
    "macro_f1": macro_f1,
    "micro_f1": micro_f1,
    "auc": auc,
}
