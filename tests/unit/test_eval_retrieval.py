"""Retrieval metrics by hand on fixed embeddings (ties broken against the relevant documents),
the data format's errors, and the config's type-specific keys."""

from __future__ import annotations

import json

import pytest
import torch

from strop.errors import StropError
from strop.eval.config import load_eval_config
from strop.eval.retrieval import (
    load_corpus,
    load_retrieval_examples,
    mean_pool,
    rank_metrics,
    ranking,
    relevant_ranks,
)

# Four documents in 2-D; d3 duplicates d0, so a query along x ties them exactly.
DOCS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
QUERY = torch.tensor([1.0, 0.0])  # cosines: [1, 0, 0.6, 1]


@pytest.mark.parametrize(
    ("relevant", "ranks", "expected"),
    [
        # d0 ties with d3 (irrelevant): the tie goes against d0 -> rank 2
        ([0], [2], {"recall@1": 0.0, "recall@2": 1.0, "recall@3": 1.0, "mrr": 0.5}),
        # d3 ties with d0 (irrelevant, earlier): rank 2 as well
        ([3], [2], {"recall@1": 0.0, "recall@2": 1.0, "recall@3": 1.0, "mrr": 0.5}),
        # both relevant: no irrelevant doc above them; corpus order between them -> 1, 2
        ([0, 3], [1, 2], {"recall@1": 0.5, "recall@2": 1.0, "recall@3": 1.0, "mrr": 1.0}),
        # d2 (0.6) is below d0 and d3 (1.0) -> 3
        ([2], [3], {"recall@1": 0.0, "recall@2": 0.0, "recall@3": 1.0, "mrr": 1 / 3}),
        # d1 (0) is last; with d2 also relevant: d2 at 3, d1 at 4
        ([1, 2], [4, 3], {"recall@1": 0.0, "recall@2": 0.0, "recall@3": 0.5, "mrr": 1 / 3}),
    ],
)
def test_recall_and_mrr_by_hand(relevant, ranks, expected):
    sim = DOCS @ QUERY
    assert relevant_ranks(sim, relevant) == ranks
    assert rank_metrics(ranks, [1, 2, 3]) == pytest.approx(expected)
    order = ranking(sim, relevant)  # the displayed order agrees with the ranks
    assert [order.index(r) + 1 for r in relevant] == ranks


def test_degenerate_embeddings_score_nothing():
    sim = torch.ones(5)  # every document equally similar: the relevant one ranks last
    assert relevant_ranks(sim, [0]) == [5]
    assert rank_metrics([5], [1, 4]) == {"recall@1": 0.0, "recall@4": 0.0, "mrr": 0.2}


def test_mean_pool_masks_and_normalises():
    hidden = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [100.0, 100.0]]])
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))  # mean (1.5, 2) -> (0.6, 0.8)
    assert pooled[0].tolist() == pytest.approx([0.6, 0.8])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task(tmp_path, queries, corpus, **extra):
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [
            {
                "name": "r",
                "type": "retrieval",
                "data": str(queries),
                **({"corpus": str(corpus)} if corpus else {}),
                **extra,
            }
        ],
    }
    return load_eval_config(None, [], raw=raw).tasks[0]


def test_format_and_errors(tmp_path):
    corpus = _write(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": 7, "text": "y"}])
    queries = _write(
        tmp_path / "q.jsonl", [{"query": "q1", "relevant": "a"}, {"query": "q2", "relevant": [7]}]
    )
    assert load_corpus(corpus) == (["a", "7"], ["x", "y"])
    task = _task(tmp_path, queries, corpus)
    assert [q.relevant for q in load_retrieval_examples(task)] == [["a"], ["7"]]
    assert task.recall_at == [1, 5, 10] and task.embedder == "model"

    bad = _write(tmp_path / "bad.jsonl", [{"query": "q", "relevant": ["a"]}, {"query": "q"}])
    with pytest.raises(StropError, match=r"bad.jsonl:2: 'relevant'"):
        load_retrieval_examples(_task(tmp_path, bad, corpus))
    unknown = _write(tmp_path / "unk.jsonl", [{"query": "q", "relevant": ["zz"]}])
    with pytest.raises(StropError, match=r"unk.jsonl:1: relevant id 'zz' is not in"):
        load_retrieval_examples(_task(tmp_path, unknown, corpus))
    dup = _write(tmp_path / "dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "z"}])
    with pytest.raises(StropError, match=r"dup.jsonl:2: duplicate id 'a'"):
        load_corpus(dup)
    empty = _write(tmp_path / "e.jsonl", [{"id": "a", "text": " "}])
    with pytest.raises(StropError, match=r"e.jsonl:1: missing or empty 'text'"):
        load_corpus(empty)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"recall_at": [0]}, "recall_at: give one or more k >= 1"),
        ({"recall_at": [1, 1]}, "recall_at: duplicate k"),
        ({"embedder": "bert"}, "embedder"),
        ({"metrics": ["exact_match"]}, r"unknown key 'metrics' \(generation tasks only"),
        ({"labels": ["a", "b"]}, r"unknown key 'labels' \(classification tasks only"),
        ({"kind": "text"}, r"unknown key 'kind' \(perplexity tasks only"),
    ],
)
def test_config_errors(tmp_path, extra, message):
    corpus = _write(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}])
    queries = _write(tmp_path / "q.jsonl", [{"query": "q", "relevant": "a"}])
    with pytest.raises(StropError, match=message):
        _task(tmp_path, queries, corpus, **extra)


def test_corpus_is_required_and_checked(tmp_path):
    queries = _write(tmp_path / "q.jsonl", [{"query": "q", "relevant": "a"}])
    with pytest.raises(StropError, match="corpus: name the JSONL file"):
        _task(tmp_path, queries, None)
    with pytest.raises(StropError, match=r"tasks.0.corpus: file not found"):
        _task(tmp_path, queries, tmp_path / "missing.jsonl")
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [{"name": "g", "type": "generation", "data": str(queries), "corpus": "x"}],
    }
    with pytest.raises(StropError, match=r"task 'g': unknown key 'corpus' \(retrieval tasks only"):
        load_eval_config(None, [], raw=raw)
