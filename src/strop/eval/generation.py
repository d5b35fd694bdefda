"""The ``generation`` eval task: the model answers each conversation's prompt turns and its
answer is scored against the final assistant turn (exact match, token F1, JSON fields, ROUGE,
corpus BLEU / chrF, pass@k over several samples).

Also the decoding settings every task that generates shares (``generation_params``:
classification with ``predict: generation``, reward with a ``reward_model``, judge answers).
"""

from __future__ import annotations

from collections import Counter

from strop.data.records import Record
from strop.errors import StropError
from strop.eval import text_metrics as tm
from strop.eval.config import Decoding, GenerationTask
from strop.eval.extraction import score_extractions
from strop.eval.scores import MetricScores, TaskOutput
from strop.infer import GenerationParams, generate


def generation_params(task: Decoding, seed: int) -> GenerationParams:
    """strop.infer.GenerationParams from a task's decoding keys."""
    return GenerationParams(
        max_new_tokens=task.max_new_tokens,
        temperature=task.temperature,
        top_p=task.top_p,
        stop=list(task.stop),
        batch_size=task.batch_size,
        seed=seed,
        weights="exact",  # a score measures the model itself, not a faster approximation
    )


def split_reference(record: Record) -> tuple[list[dict], str]:
    """(prompt messages, reference): the reference is the final assistant turn."""
    msgs = record.messages or []
    if len(msgs) < 2 or msgs[-1].role != "assistant":
        raise StropError(
            f"{record.origin}: a generation eval row must end with an assistant turn (the "
            "reference answer) after at least one prompt turn"
        )
    return [{"role": m.role, "content": m.content} for m in msgs[:-1]], msgs[-1].content


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
    try:
        s = score_extractions([prediction], [reference])
    except ValueError:
        raise StropError(
            f"{origin}: metric json_fields needs a JSON object as the reference answer"
        ) from None
    return {"json_field_accuracy": s.field_accuracy, "json_valid": s.valid_json}


def _sample_scores(task: GenerationTask, pred: str, ref: str, origin: str) -> dict[str, float]:
    """Sentence-level metrics of one sample (corpus statistics are gathered separately)."""
    row: dict[str, float] = {}
    if "exact_match" in task.metrics:
        row["exact_match"] = exact_match(pred, ref)
    if "token_f1" in task.metrics:
        row["token_f1"] = token_f1(pred, ref)
    if "rouge" in task.metrics:
        row.update(tm.rouge(pred, ref))
    if "json_fields" in task.metrics:
        row.update(json_fields(pred, ref, origin))
    return row


CORPUS_METRICS = {"bleu": tm.bleu_example, "chrf": tm.chrf_example}


def score_generations(
    task: GenerationTask, samples: list[list[str]], refs: list[str], origins
) -> dict[str, MetricScores]:
    """Per-example metrics from ``samples[i]`` (the n_samples completions of example i): each
    sentence metric is the mean over the samples, corpus statistics are summed over them, and
    pass@k counts the correct samples."""
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
            scored = [fn(p, ref, **kw) for p in preds]
            add(metric, sum(sentence for sentence, _ in scored) / len(scored))
            total = [sum(col) for col in zip(*(st for _, st in scored), strict=True)]
            m = out[metric]
            m.reduce, m.stats = metric, [*(m.stats or []), total]
        if task.pass_at_k:
            c = sum(tm.sample_passes(p, ref, task.pass_check, task.pass_pattern) for p in preds)
            for k in task.pass_at_k:
                add(f"pass@{k}", tm.pass_at_k(len(preds), c, k))
    return out


def run_generation(
    model, tokenizer, task: GenerationTask, examples: list[Record], seed: int
) -> TaskOutput:
    pairs = [split_reference(r) for r in examples]
    params = generation_params(task, seed)
    n = task.n_samples
    # Each prompt n times in a row: one seeded generate call draws n different samples.
    flat = generate(
        model,
        tokenizer,
        [p for p, _ in pairs for _ in range(n)],
        params,
        progress=f"task {task.name}",
    )
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
