"""Eval task types: each turns (model, tokenizer, examples) into per-example metric scores.

Per-example scores (not just means) are kept so the paired bootstrap in ``stats`` can put a
confidence interval on any difference between two models. Task types live in ``TASKS``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from strop.data.records import Record
from strop.errors import StropError
from strop.eval.config import TaskSpec


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
        from strop.eval.stats import aggregate, reduce_stats

        if self.reduce is not None:
            return reduce_stats(self.stats, self.reduce)
        return aggregate(self.scores, self.weights, self.transform)


@dataclass
class TaskOutput:
    metrics: dict[str, MetricScores]
    predictions: list[dict] | None = None  # generation: prompt origin, prediction, reference
    breakdown: dict | None = None  # extra results (multiple_choice: per_subject)


def load_examples(task: TaskSpec) -> list:
    from strop.data.validate import load_records

    if task.type == "multiple_choice":
        from strop.eval.multiple_choice import load_mc_examples

        return load_mc_examples(task)
    if task.type == "classification":
        from strop.eval.classification import load_classification_examples

        return load_classification_examples(task)
    if task.type == "retrieval":
        from strop.eval.retrieval import load_retrieval_examples

        return load_retrieval_examples(task)

    kind = "text" if task.kind == "text" else "chat"
    if task.type in ("preference", "reward"):
        kind = "preference"
    records = load_records(task.data, task.format, kind=kind, max_bad_fraction=0.0).records
    return records[: task.limit] if task.limit else records


# -- generation ---------------------------------------------------------------------------------


def split_reference(record: Record) -> tuple[list[dict], str]:
    """(prompt messages, reference): the reference is the final assistant turn."""
    msgs = record.messages or []
    if len(msgs) < 2 or msgs[-1].role != "assistant":
        raise StropError(
            f"{record.origin}: a generation eval row must end with an assistant turn (the "
            "reference answer) after at least one prompt turn"
        )
    return [{"role": m.role, "content": m.content} for m in msgs[:-1]], msgs[-1].content


def split_prompt(record: Record) -> list[dict]:
    """The prompt turns of a chat row: everything before a final assistant turn, if any."""
    msgs = record.messages or []
    if msgs and msgs[-1].role == "assistant":
        msgs = msgs[:-1]
    if not msgs:
        raise StropError(f"{record.origin}: a judge eval row needs at least one prompt turn")
    return [{"role": m.role, "content": m.content} for m in msgs]


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over whitespace tokens (multiset overlap); two empty strings score 1."""
    pred, ref = prediction.split(), reference.split()
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def json_fields(prediction: str, reference: str, origin: str) -> dict[str, float]:
    """Field accuracy and validity of the first JSON object in the prediction."""
    from strop.eval.extraction import score_extractions

    try:
        s = score_extractions([prediction], [reference])
    except ValueError:
        raise StropError(
            f"{origin}: metric json_fields needs a JSON object as the reference answer"
        ) from None
    return {"json_field_accuracy": s.field_accuracy, "json_valid": s.valid_json}


def _sample_scores(task: TaskSpec, pred: str, ref: str, origin: str) -> dict[str, float]:
    """Sentence-level metrics of one sample (corpus statistics are gathered separately)."""
    from strop.eval.text_metrics import rouge

    row: dict[str, float] = {}
    if "exact_match" in task.metrics:
        row["exact_match"] = exact_match(pred, ref)
    if "token_f1" in task.metrics:
        row["token_f1"] = token_f1(pred, ref)
    if "rouge" in task.metrics:
        row.update(rouge(pred, ref))
    if "json_fields" in task.metrics:
        row.update(json_fields(pred, ref, origin))
    return row


CORPUS_METRICS = {"bleu": "bleu_example", "chrf": "chrf_example"}


def score_generations(task: TaskSpec, samples: list[list[str]], refs: list[str], origins) -> dict:
    """Per-example metrics from ``samples[i]`` (the n_samples completions of example i): each
    sentence metric is the mean over the samples, corpus statistics are summed over them, and
    pass@k counts the correct samples."""
    from strop.eval import text_metrics as tm

    out: dict[str, MetricScores] = {}

    def add(name: str, value: float) -> None:
        out.setdefault(name, MetricScores([])).scores.append(value)

    for preds, ref, origin in zip(samples, refs, origins, strict=True):
        rows = [_sample_scores(task, p, ref, origin) for p in preds]
        for key in rows[0]:
            add(key, sum(r[key] for r in rows) / len(rows))
        for metric, fn in CORPUS_METRICS.items():
            if metric not in task.metrics:
                continue
            kw = {"tokenize": task.bleu_tokenize} if metric == "bleu" else {}
            scored = [getattr(tm, fn)(p, ref, **kw) for p in preds]
            add(metric, sum(sentence for sentence, _ in scored) / len(scored))
            total = [sum(col) for col in zip(*(st for _, st in scored), strict=True)]
            m = out[metric]
            m.reduce, m.stats = metric, [*(m.stats or []), total]
        if task.pass_at_k:
            c = sum(tm.sample_passes(p, ref, task.pass_check, task.pass_pattern) for p in preds)
            for k in task.pass_at_k:
                add(f"pass@{k}", tm.pass_at_k(len(preds), c, k))
    return out


def run_generation(model, tokenizer, task: TaskSpec, examples: list[Record], seed: int):
    from strop.infer import generate

    pairs = [split_reference(r) for r in examples]
    params = task.generation_params(seed)
    n = task.n_samples
    # Each prompt n times in a row: one seeded generate call draws n different samples.
    flat = generate(model, tokenizer, [p for p, _ in pairs for _ in range(n)], params)
    samples = [flat[i * n : (i + 1) * n] for i in range(len(pairs))]
    refs = [ref for _, ref in pairs]
    metrics = score_generations(task, samples, refs, [r.origin for r in examples])
    predictions = []
    for r, s, ref in zip(examples, samples, refs, strict=True):
        row = {"origin": r.origin, "prediction": s[0], "reference": ref}
        if n > 1:
            row["samples"] = s
        predictions.append(row)
    return TaskOutput(metrics, predictions)


# -- perplexity ---------------------------------------------------------------------------------


def run_perplexity(model, tokenizer, task: TaskSpec, examples: list[Record], seed: int):
    """Mean cross-entropy per target token (chat: the turns ``task.mask`` selects; text: every
    token), perplexity = exp(that), and bits per byte = CE sum / ln 2 / UTF-8 bytes of the
    target text (special tokens such as <|im_end|> add loss but no bytes)."""
    from strop.data.batching import collate, unpacked
    from strop.data.render import IGNORE, tokenize_records
    from strop.models.logps import target_nll_sum

    samples, _, _ = tokenize_records(
        tokenizer, examples, mask=task.mask, max_length=task.max_length, truncation="right"
    )
    if not samples:
        raise StropError(f"task {task.name!r}: no example has a target token to score")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss, tokens, nbytes = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for row in unpacked(samples):  # one example per forward: per-example sums
                batch = collate([row], pad)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss_sum, n_targets = target_nll_sum(model, batch, 1024)
                n = int(n_targets)
                target = [y for y in row.labels[1:] if y != IGNORE]
                text = tokenizer.decode(target, skip_special_tokens=True)
                loss.append(float(loss_sum) / n)
                tokens.append(float(n))
                nbytes.append(float(len(text.encode("utf-8"))))
    finally:
        model.train(was_training)
    # bits per byte per example = loss_sum / ln2 / bytes, weighted by bytes -> ratio of sums.
    bpb = [
        (ce * n / math.log(2) / b) if b else 0.0
        for ce, n, b in zip(loss, tokens, nbytes, strict=True)
    ]
    metrics = {
        "loss": MetricScores(loss, tokens),
        "ppl": MetricScores(loss, tokens, "exp"),
        "bits_per_byte": MetricScores(bpb, nbytes),
    }
    return TaskOutput(metrics)


def run_multiple_choice(model, tokenizer, task: TaskSpec, examples: list, seed: int):
    from strop.eval.multiple_choice import run_multiple_choice as run

    return run(model, tokenizer, task, examples, seed)


def run_preference(model, tokenizer, task: TaskSpec, examples: list, seed: int):
    from strop.eval.preference import run_preference as run

    return run(model, tokenizer, task, examples, seed)


def run_classification(model, tokenizer, task: TaskSpec, examples: list, seed: int):
    from strop.eval.classification import run_classification as run

    return run(model, tokenizer, task, examples, seed)


def run_reward(model, tokenizer, task: TaskSpec, examples: list, seed: int):
    from strop.eval.reward import run_reward as run

    return run(model, tokenizer, task, examples, seed)


def run_judge_answers(model, tokenizer, task: TaskSpec, examples: list, seed: int):
    from strop.eval.judge import run_judge_answers as run

    return run(model, tokenizer, task, examples, seed)


def run_retrieval(model, tokenizer, task: TaskSpec, examples: list, seed: int):
    from strop.eval.retrieval import run_retrieval as run

    return run(model, tokenizer, task, examples, seed)


def model_kind(task: TaskSpec) -> str:
    """How a task needs each evaluated model loaded: ``lm`` (causal LM), ``reward``, or
    ``none`` (the task does not use the evaluated model: retrieval with the MiniLM embedder)."""
    if task.type == "retrieval" and task.embedder == "minilm":
        return "none"
    return "reward" if task.type == "reward" and task.reward_model is None else "lm"


TaskFn = Callable[..., TaskOutput]
TASKS: dict[str, TaskFn] = {
    "generation": run_generation,
    "perplexity": run_perplexity,
    "multiple_choice": run_multiple_choice,
    "preference": run_preference,
    "classification": run_classification,
    "reward": run_reward,
    "judge": run_judge_answers,  # answers per model; verdicts in judge.judge_task afterwards
    "retrieval": run_retrieval,
}
