"""Multiple-choice eval (MMLU / C-Eval / CMMLU style), scored by log-likelihood.

The question files and their published layouts are read by ``strop.eval.mc_data``; the
log-likelihoods come from ``strop.eval.loglik``.

Each choice's continuation (" A", " B", ... with ``score: letter``; " <choice text>" with
``score: text``) is scored by the sum of its tokens' log-probs given the prompt; the prediction is
the argmax. ``accuracy_norm`` divides each sum by the choice's length in characters, without
the leading delimiter space, exactly as lm-eval's ``acc_norm`` (docs/eval.md), before the
argmax. Per-example 0/1 scores feed the paired bootstrap.
"""

from __future__ import annotations

from strop.errors import StropError
from strop.eval.config import MultipleChoiceTask
from strop.eval.loglik import continuation_logprobs, render_context, split_ids
from strop.eval.mc_data import LETTERS, MCExample, load_mc_file
from strop.eval.scores import MetricScores, TaskOutput


def load_mc_examples(task: MultipleChoiceTask) -> list[MCExample]:
    paths = [task.data] if isinstance(task.data, str) else task.data
    examples = [ex for p in paths for ex in load_mc_file(p)]
    return examples[: task.limit] if task.limit else examples


# -- prompts -----------------------------------------------------------------------------------


def continuation(ex: MCExample, i: int, score: str) -> str:
    return " " + (LETTERS[i] if score == "letter" else ex.choices[i])


def question_block(ex: MCExample) -> str:
    lines = [f"Question: {ex.question}"]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(ex.choices)]
    return "\n".join(lines) + "\nAnswer:"


def pick_shots(ex: MCExample, dev: list[MCExample], k: int) -> list[MCExample]:
    """The first k dev rows of the question's subject (when it has one and dev has subjects),
    else the first k dev rows; the same shots for every question of a subject."""
    if k == 0:
        return []
    if ex.subject is not None and any(d.subject is not None for d in dev):
        same = [d for d in dev if d.subject == ex.subject]
        if len(same) < k:
            raise StropError(
                f"{ex.origin}: shots: {k} but the dev file has {len(same)} row(s) for subject "
                f"{ex.subject!r}"
            )
        return same[:k]
    if len(dev) < k:
        raise StropError(f"shots: {k} but the dev file has only {len(dev)} row(s)")
    return dev[:k]


def build_prompt(ex: MCExample, shots: list[MCExample], score: str) -> str:
    blocks = [question_block(s) + continuation(s, s.answer, score) for s in shots]
    return "\n\n".join([*blocks, question_block(ex)])


def choice_chars(continuation: str) -> int:
    """Characters of the choice itself: the continuation less its leading delimiter space
    (lm-eval's ``acc_norm`` divides by ``len(choice)``); at least 1."""
    return max(1, len(continuation[1:] if continuation.startswith(" ") else continuation))


def score_choices(
    model, tokenizer, task: MultipleChoiceTask, examples: list[MCExample]
) -> list[dict]:
    """Per example: continuations, their log-likelihoods, and the plain / normalised picks."""
    dev = load_mc_file(task.dev) if task.dev else []
    chat = bool(task.chat_template)
    pairs, index = [], []
    for n, ex in enumerate(examples):
        prompt = build_prompt(ex, pick_shots(ex, dev, task.shots), task.score)
        context = render_context(tokenizer, prompt, chat)
        for i in range(len(ex.choices)):
            cont = continuation(ex, i, task.score)
            if chat:
                cont = cont.lstrip(" ")
            ctx_ids, cont_ids = split_ids(tokenizer, context, cont, chat)
            if task.max_length and len(ctx_ids) + len(cont_ids) > task.max_length:
                ctx_ids = ctx_ids[-max(1, task.max_length - len(cont_ids)) :]  # cut the left
            pairs.append((ctx_ids, cont_ids))
            index.append((n, cont))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lls = continuation_logprobs(model, pairs, task.batch_size, pad)
    rows = [
        {"origin": ex.origin, "subject": ex.subject, "answer": ex.answer, "conts": [], "ll": []}
        for ex in examples
    ]
    for (n, cont), ll in zip(index, lls, strict=True):
        rows[n]["conts"].append(cont)
        rows[n]["ll"].append(ll)
    for r in rows:
        norm = [ll / choice_chars(c) for ll, c in zip(r["ll"], r["conts"], strict=True)]
        r["pred"] = max(range(len(r["ll"])), key=r["ll"].__getitem__)
        r["pred_norm"] = max(range(len(norm)), key=norm.__getitem__)
    return rows


def run_multiple_choice(
    model, tokenizer, task: MultipleChoiceTask, examples: list[MCExample], seed: int
):
    rows = score_choices(model, tokenizer, task, examples)
    acc = [float(r["pred"] == r["answer"]) for r in rows]
    acc_norm = [float(r["pred_norm"] == r["answer"]) for r in rows]
    subjects = [r["subject"] or "(none)" for r in rows]
    counts = {s: subjects.count(s) for s in dict.fromkeys(subjects)}
    per_subject = {
        s: {
            "accuracy": sum(a for a, t in zip(acc, subjects, strict=True) if t == s) / n,
            "n": n,
        }
        for s, n in counts.items()
    }
    metrics = {
        "accuracy": MetricScores(acc),
        "accuracy_norm": MetricScores(acc_norm),
        # mean over subjects = weighted mean with weight 1/n_subject per example
        "accuracy_macro": MetricScores(acc, [1.0 / counts[s] for s in subjects]),
    }
    predictions = [
        {
            "origin": r["origin"],
            "subject": r["subject"],
            "answer": LETTERS[r["answer"]],
            "prediction": LETTERS[r["pred"]],
            "prediction_norm": LETTERS[r["pred_norm"]],
            "loglik": r["ll"],
        }
        for r in rows
    ]
    return TaskOutput(metrics, predictions, breakdown={"per_subject": per_subject})
