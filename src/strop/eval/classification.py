"""The ``classification`` eval task: pick one label from a fixed set.

``predict: loglik`` scores each label as a continuation of the prompt with the multiple-choice
scorer (``loglik.continuation_logprobs``: the sum of the label's token log-probs) and
predicts the argmax; a softmax over the labels' log-likelihoods gives the class probabilities
behind AUC. ``predict: generation`` generates an answer and takes the label that occurs first
in it (case-insensitive; at equal start the longer label, so "very good" beats "good"); an
answer naming no label is wrong for accuracy and counts as a miss of the gold class for F1.

Metrics (scikit-learn): accuracy, macro F1 (mean of per-label F1, labels absent from both gold
and predictions count 0), micro F1 (over the label set; equals accuracy unless some answer
named no label) and, with ``loglik``, one-vs-rest macro AUC (binary: the AUC of the second
label's probability). F1 and AUC are not means of per-example scores, so each example carries
[gold, predicted, p_0 .. p_L-1] and the bootstrap recomputes them on every resample (the
metrics themselves are ``strop.eval.reducers``').
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strop.errors import StropError
from strop.eval.config import ClassificationTask
from strop.eval.generation import generation_params
from strop.eval.loglik import continuation_logprobs, render_context, split_ids
from strop.eval.reducers import split_label_stats
from strop.eval.scores import MetricScores, TaskOutput
from strop.infer import generate


@dataclass
class ClassExample:
    origin: str
    text: str
    label: int  # index into the task's labels


def _rows(path: Path):
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            start = reader.line_num + 1
            for row in reader:
                yield f"{path}:{start}", row
                start = reader.line_num + 1
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise StropError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None


def load_classification_examples(task: ClassificationTask) -> list[ClassExample]:
    """Rows with ``text`` and ``label`` (one of ``task.labels``), from JSONL or CSV."""
    out = []
    for path in [task.data] if isinstance(task.data, str) else task.data:
        for origin, row in _rows(Path(path)):
            if not isinstance(row, dict):
                raise StropError(f"{origin}: expected an object with 'text' and 'label'")
            text, label = row.get("text"), row.get("label")
            if not isinstance(text, str) or not text.strip():
                raise StropError(f"{origin}: missing or empty 'text'")
            if label not in task.labels:
                raise StropError(
                    f"{origin}: label {label!r} is not one of the task's labels "
                    f"({', '.join(task.labels)})"
                )
            out.append(ClassExample(origin, text, task.labels.index(label)))
    return out[: task.limit] if task.limit else out


# -- predicting ---------------------------------------------------------------------------------


def label_logliks(
    model, tokenizer, task: ClassificationTask, examples: list[ClassExample]
) -> list[list[float]]:
    """Log-likelihood of every label as the continuation of each example's prompt."""
    chat = bool(task.chat_template)
    pairs = []
    for ex in examples:
        context = render_context(tokenizer, task.prompt.format(text=ex.text), chat)
        for label in task.labels:
            ctx, cont = split_ids(tokenizer, context, label if chat else " " + label, chat)
            if len(ctx) + len(cont) > task.max_length:
                ctx = ctx[-max(1, task.max_length - len(cont)) :]  # cut the left
            pairs.append((ctx, cont))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    flat = continuation_logprobs(model, pairs, task.batch_size, pad)
    n = len(task.labels)
    return [flat[i * n : (i + 1) * n] for i in range(len(examples))]


def first_label(text: str, labels: list[str]) -> int | None:
    """Index of the label occurring first in ``text`` (case-insensitive; longer wins a tie)."""
    low = text.lower()
    found = [(low.find(lab.lower()), -len(lab), i) for i, lab in enumerate(labels)]
    found = [f for f in found if f[0] >= 0]
    return min(found)[2] if found else None


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(x - top) for x in row]
    return [x / sum(e) for x in e]


def run_classification(
    model, tokenizer, task: ClassificationTask, examples: list[ClassExample], seed: int
) -> TaskOutput:
    n_labels = len(task.labels)
    if task.predict == "loglik":
        lls = label_logliks(model, tokenizer, task, examples)
        probs = [softmax(row) for row in lls]
        preds = [max(range(n_labels), key=row.__getitem__) for row in lls]
        answers = None
    else:
        params = generation_params(task, seed)
        answers = generate(
            model, tokenizer, [task.prompt.format(text=ex.text) for ex in examples], params
        )
        found = [first_label(a, task.labels) for a in answers]
        preds = [-1 if f is None else f for f in found]
        probs = [[0.0] * n_labels for _ in examples]
        lls = None
    correct = [float(p == ex.label) for p, ex in zip(preds, examples, strict=True)]
    stats = [
        [float(ex.label), float(p), *pr] for ex, p, pr in zip(examples, preds, probs, strict=True)
    ]
    metrics = {"accuracy": MetricScores(correct)}
    names = ["macro_f1", "micro_f1"] + (["auc"] if task.predict == "loglik" else [])
    for name in names:
        metrics[name] = MetricScores(list(correct), stats=stats, reduce=name)
    predictions = []
    for i, ex in enumerate(examples):
        row = {
            "origin": ex.origin,
            "label": task.labels[ex.label],
            "prediction": task.labels[preds[i]] if preds[i] >= 0 else None,
        }
        if lls is not None:
            row["loglik"], row["probs"] = lls[i], probs[i]
        if answers is not None:
            row["answer"] = answers[i]
        predictions.append(row)
    return TaskOutput(metrics, predictions, breakdown={"per_label": per_label(task, stats)})


def per_label(task: ClassificationTask, stats: list[list[float]]) -> dict:
    """Precision, recall, F1 and support of each label (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support  # > 1 s to import

    gold, pred, _ = split_label_stats(np.asarray(stats))
    p, r, f, n = precision_recall_fscore_support(
        gold, pred, labels=list(range(len(task.labels))), zero_division=0
    )
    return {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "n": int(n[i])}
        for i, lab in enumerate(task.labels)
    }
