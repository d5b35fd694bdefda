"""`classification` on tiny-llama: label log-likelihoods equal a straightforward one-forward
reference, metrics equal scikit-learn on the written predictions, generation mode, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from strop.errors import StropError
from strop.eval.classification import first_label
from strop.eval.config import load_eval_config
from strop.eval.runner import run_eval

DATA = Path(__file__).parents[2] / "examples" / "eval" / "sentiment.jsonl"
LABELS = ["positive", "negative", "neutral"]


def _cfg(tmp_path, **task):
    raw = {
        "models": {"base": {"model": "tiny-llama", "dtype": "fp32"}, "same": "tiny-llama"},
        "output_dir": str(tmp_path / "out"),
        "bootstrap": 50,
        "tasks": [
            {
                "name": "cls",
                "type": "classification",
                "data": str(DATA),
                "labels": LABELS,
                "prompt": "Review: {text}\nSentiment:",
                **task,
            }
        ],
    }
    return load_eval_config(None, [], raw=raw)


def test_loglik_classification_matches_reference_and_sklearn(tmp_path, tiny_llama_dir):
    from strop.models.load import load_model

    out = run_eval(_cfg(tmp_path, batch_size=4), log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())["tasks"]["cls"]
    preds = [
        json.loads(x) for x in (out / "predictions" / "cls.base.jsonl").read_text().splitlines()
    ]
    model, tok, _ = load_model("tiny-llama", "fp32")
    rows = [json.loads(x) for x in DATA.read_text().splitlines()]
    for row, p in zip(rows, preds, strict=True):
        context = f"Review: {row['text']}\nSentiment:"
        want = []
        for lab in LABELS:
            ctx = tok(context)["input_ids"]
            whole = tok(context + " " + lab)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0], -1)
            want.append(sum(float(logp[j - 1, whole[j]]) for j in range(len(ctx), len(whole))))
        assert p["loglik"] == pytest.approx(want, abs=1e-5)
        assert p["prediction"] == LABELS[max(range(3), key=want.__getitem__)]
        assert sum(p["probs"]) == pytest.approx(1.0)
    gold = [LABELS.index(r["label"]) for r in rows]
    pred = [LABELS.index(p["prediction"]) for p in preds]
    got = res["results"]["base"]
    assert got["accuracy"]["value"] == pytest.approx(accuracy_score(gold, pred))
    assert got["macro_f1"]["value"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert got["micro_f1"]["value"] == pytest.approx(f1_score(gold, pred, average="micro"))
    probs = [p["probs"] for p in preds]
    assert got["auc"]["value"] == pytest.approx(roc_auc_score(gold, probs, multi_class="ovr"))
    assert set(res["per_label"]["base"]) == set(LABELS)
    assert res["per_label"]["base"]["neutral"]["n"] == 3
    assert res["settings"]["labels"] == LABELS and res["settings"]["predict"] == "loglik"
    for d in res["deltas"]["same"].values():
        assert d["delta"] == 0.0 and d["ci95"] == [0.0, 0.0]


def test_generation_classification_takes_the_first_label(tmp_path, tiny_llama_dir):
    labels = ["a", "e", "o"]  # single letters, so a random tiny model's output names some
    cfg = _cfg(tmp_path, predict="generation", labels=labels, max_new_tokens=6)
    rows = [json.loads(x) for x in DATA.read_text().splitlines()]
    data = tmp_path / "letters.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": r["text"], "label": labels[i % 3]}) + "\n"
            for i, r in enumerate(rows)
        )
    )
    cfg.tasks[0].data = str(data)
    out = run_eval(cfg, log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())["tasks"]["cls"]["results"]["base"]
    preds = [
        json.loads(x) for x in (out / "predictions" / "cls.base.jsonl").read_text().splitlines()
    ]
    assert set(res) == {"accuracy", "macro_f1", "micro_f1"}  # no scores, no AUC
    for p in preds:
        i = first_label(p["answer"], labels)
        assert p["prediction"] == (None if i is None else labels[i])
    acc = sum(p["prediction"] == p["label"] for p in preds) / len(preds)
    assert res["accuracy"]["value"] == pytest.approx(acc)


@pytest.mark.parametrize(
    ("task", "needle"),
    [
        ({"labels": ["only"]}, "labels: name at least two labels"),
        ({"labels": ["a", "a"]}, "labels: labels must be non-empty and distinct"),
        ({"prompt": "no slot"}, "prompt: must contain {text}"),
        ({"prompt": "{text} {other}"}, "prompt: only {text} may appear in braces"),
        ({"predict": "vote"}, "tasks.0 (classification): predict:"),
        ({"metrics": ["exact_match"]}, "unknown key 'metrics' (generation tasks only)"),
    ],
)
def test_config_errors_name_the_key(tmp_path, task, needle):
    with pytest.raises(StropError) as err:
        _cfg(tmp_path, **task)
    assert needle in str(err.value)


def test_classification_keys_rejected_elsewhere_and_bad_rows(tmp_path):
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [{"name": "p", "type": "perplexity", "data": str(DATA), "labels": ["a", "b"]}],
    }
    with pytest.raises(StropError, match=r"unknown key 'labels' \(classification tasks only"):
        load_eval_config(None, [], raw=raw)
    from strop.eval.classification import load_classification_examples

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "positive"}\n{"text": "x", "label": "meh"}\n')
    task = _cfg(tmp_path).tasks[0]
    task.data = str(bad)
    with pytest.raises(StropError, match=r"bad\.jsonl:2: label 'meh' is not one of"):
        load_classification_examples(task)
