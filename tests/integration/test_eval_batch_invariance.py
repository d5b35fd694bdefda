"""Scores must not depend on the batch size: multiple_choice and classification log-likelihoods
(right-padded batches of 1, 8 and 32 forwards) and perplexity (one example per forward, checked
against padded batches of 8 and 32 scored by hand), fp32 on tiny-llama."""

from __future__ import annotations

import json

import pytest
import torch

from strop.eval.config import load_eval_config
from strop.eval.multiple_choice import load_mc_file, score_choices

ROWS = [
    {
        "question": f"Which number comes after {i}?",
        "choices": [str(i + 1), str(i + 7), "none", f"{i} and {i + 1} and more"],
        "answer": 0,
    }
    for i in range(12)
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from strop.models.load import load_model

    model, tok, _ = load_model("tiny-llama", "fp32")
    return model.eval(), tok


def _task(path, **kw):
    raw = {"models": {"m": "tiny-llama"}, "tasks": [{"name": "t", "data": str(path), **kw}]}
    return load_eval_config(None, [], raw=raw).tasks[0]


@pytest.mark.parametrize("score", ["letter", "text"])
def test_multiple_choice_loglik_identical_for_batch_1_8_32(tmp_path, tiny, score):
    model, tok = tiny
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    examples = load_mc_file(path)
    lls = {}
    for bs in (1, 8, 32):
        task = _task(path, type="multiple_choice", score=score, batch_size=bs)
        lls[bs] = [ll for r in score_choices(model, tok, task, examples) for ll in r["ll"]]
    # 48 (question, choice) forwards of ragged length: batches of 8 and 32 hold padding
    assert lls[8] == pytest.approx(lls[1], abs=1e-5, rel=0)
    assert lls[32] == pytest.approx(lls[1], abs=1e-5, rel=0)
    assert len(lls[1]) == 48


def test_classification_loglik_identical_for_batch_1_8_32(tiny):
    from pathlib import Path

    from strop.eval.classification import label_logliks, load_classification_examples

    model, tok = tiny
    data = Path(__file__).parents[2] / "examples" / "eval" / "sentiment.jsonl"
    labels = ["positive", "negative", "neutral"]
    out = {}
    for bs in (1, 8, 32):
        task = _task(data, type="classification", labels=labels, batch_size=bs)
        rows = label_logliks(model, tok, task, load_classification_examples(task))
        out[bs] = [ll for row in rows for ll in row]
    assert out[8] == pytest.approx(out[1], abs=1e-5, rel=0)
    assert out[32] == pytest.approx(out[1], abs=1e-5, rel=0)


@pytest.mark.parametrize("bs", [8, 32])
def test_perplexity_per_example_losses_match_padded_batches(tmp_path, tiny, bs):
    from strop.data.batching import collate, unpacked
    from strop.data.render import tokenize_records
    from strop.eval.perplexity import run_perplexity
    from strop.eval.tasks import load_examples
    from tests.helpers import write_chat_jsonl

    model, tok = tiny
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=32, seed=9)
    task = _task(data, type="perplexity")  # one example per forward: no batch size
    records = load_examples(task)
    got = run_perplexity(model, tok, task, records, 0).metrics["loss"]
    samples, _, _ = tokenize_records(
        tok, records, mask="assistant", max_length=1024, truncation="right"
    )
    rows = unpacked(samples)
    want = []
    for s in range(0, len(rows), bs):  # padded batches, 2-D mask, per-row sums by hand
        batch = collate(rows[s : s + bs], tok.pad_token_id, doc_attention=False)
        with torch.inference_mode():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        tok_lp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep
        want += (-tok_lp.sum(1) / keep.sum(1)).tolist()
    assert got.scores == pytest.approx(want, abs=1e-5, rel=0)
