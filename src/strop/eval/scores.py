"""What every eval task returns: per-example metric scores, so the paired bootstrap in
``stats`` can put a confidence interval on any difference between two models.

The bottom of ``strop.eval``'s task code: the task modules import these two classes, and this
module imports only ``stats``.
"""

from __future__ import annotations

from dataclasses import dataclass

from strop.eval.stats import aggregate, reduce_stats


@dataclass
class MetricScores:
    """One metric on one model: ``transform(sum(w * s) / sum(w))`` over examples, or, for a
    corpus metric (``reduce`` set), ``REDUCERS[reduce](sum of per-example stats)``; ``scores``
    then holds each example's sentence-level score, for reading only."""

    scores: list[float]
    weights: list[float] | None = None
    transform: str = "identity"
    stats: list[list[float]] | None = None
    reduce: str | None = None

    @property
    def value(self) -> float:
        if self.reduce is not None:
            return reduce_stats(self.stats, self.reduce)
        return aggregate(self.scores, self.weights, self.transform)


@dataclass
class TaskOutput:
    metrics: dict[str, MetricScores]
    predictions: list[dict] | None = None  # generation: prompt origin, prediction, reference
    breakdown: dict | None = None  # extra results (multiple_choice: per_subject)
