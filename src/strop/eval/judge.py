"""The ``judge`` eval task: a judge model compares each model's answers with the baseline's.

Every evaluated model answers the same prompts (greedy unless ``temperature`` > 0). For each
non-baseline model and prompt the judge (any model strop loads) reads the question and two
answers and its verdict is whichever of the continuations " A" / " B" it gives the higher
log-likelihood (the multiple-choice scorer; no generation, so no parsing). Judges prefer one
position (Zheng et al. 2023, "Judging LLM-as-a-Judge"), so each pair is judged twice with the
answers swapped: the candidate *wins* when it is preferred in both orders, *loses* when the
baseline is preferred in both, and the result is a *tie* when the two verdicts disagree (or a
log-likelihood is exactly equal). ``win_rate``, ``tie_rate``, ``loss_rate`` are shares of
prompts; the baseline column is a tie with itself by definition (0, 1, 0), so the paired
bootstrap delta against it is the rate itself with its 95% CI.
"""

from __future__ import annotations

import torch

from strop.data.records import Record
from strop.errors import StropError
from strop.eval.config import JudgeTask
from strop.eval.generation import generation_params
from strop.eval.loglik import continuation_logprobs, render_context, split_ids
from strop.eval.scores import MetricScores, TaskOutput
from strop.infer import generate
from strop.models.load import load_model

JUDGE_PROMPT = (
    "Question: {question}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\n"
    "Which answer is better? Reply with A or B.\nBetter answer:"
)


def pick(ll_a: float, ll_b: float) -> str | None:
    """The judge's choice from the two letters' log-likelihoods (None when exactly equal)."""
    return "A" if ll_a > ll_b else "B" if ll_b > ll_a else None


def combine(first: str | None, second: str | None) -> str:
    """Candidate's result from the verdict with it as B (``first``) and as A (``second``)."""
    if first == "B" and second == "A":
        return "win"
    if first == "A" and second == "B":
        return "loss"
    return "tie"


def _question(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def split_prompt(record: Record) -> list[dict]:
    """The prompt turns of a chat row: everything before a final assistant turn, if any."""
    msgs = record.messages or []
    if msgs and msgs[-1].role == "assistant":
        msgs = msgs[:-1]
    if not msgs:
        raise StropError(f"{record.origin}: a judge eval row needs at least one prompt turn")
    return [{"role": m.role, "content": m.content} for m in msgs]


def run_judge_answers(
    model, tokenizer, task: JudgeTask, examples: list[Record], seed: int
) -> TaskOutput:
    """Per column: generate the answers; the judging happens once all columns have answered."""
    prompts = [split_prompt(r) for r in examples]
    params = generation_params(task, seed)
    answers = generate(model, tokenizer, prompts, params)
    preds = [
        {"origin": r.origin, "prompt": p, "prediction": a}
        for r, p, a in zip(examples, prompts, answers, strict=True)
    ]
    return TaskOutput({}, preds)


def judge_pairs(
    model, tokenizer, task: JudgeTask, questions, base_answers, cand_answers
) -> list[dict]:
    """Both orders of every (baseline, candidate) pair, scored in one batched pass."""
    chat = bool(task.chat_template)
    pairs = []
    for q, b, c in zip(questions, base_answers, cand_answers, strict=True):
        for a_text, b_text in ((b, c), (c, b)):  # candidate as B, then as A
            prompt = render_context(
                tokenizer, JUDGE_PROMPT.format(question=q, a=a_text, b=b_text), chat
            )
            for letter in ("A", "B"):
                ctx, cont = split_ids(tokenizer, prompt, letter if chat else " " + letter, chat)
                if len(ctx) + len(cont) > task.max_length:
                    ctx = ctx[-max(1, task.max_length - len(cont)) :]
                pairs.append((ctx, cont))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ll = continuation_logprobs(model, pairs, task.batch_size, pad)
    out = []
    for i in range(len(questions)):
        first, second = pick(ll[4 * i], ll[4 * i + 1]), pick(ll[4 * i + 2], ll[4 * i + 3])
        out.append(
            {
                "first": first,
                "second": second,
                "result": combine(first, second),
                "loglik": ll[4 * i : 4 * i + 4],
            }
        )
    return out


def judge_task(task: JudgeTask, per_model: dict, baseline: str, log=print) -> None:
    """Fill every column's win/tie/loss metrics in place (``per_model``: name -> TaskOutput)."""
    if baseline not in per_model or len(per_model) < 2:
        raise StropError(f"task {task.name!r}: judge needs the baseline and another model")
    model, tok, _ = load_model(task.judge, "auto", task.judge_adapter)
    if torch.cuda.is_available():
        model = model.to("cuda")
    base = per_model[baseline].predictions
    questions = [_question(p["prompt"]) for p in base]
    n = len(base)
    for name, out in per_model.items():
        if name == baseline:
            verdicts = [{"result": "tie"} for _ in range(n)]
        else:
            cand = [p["prediction"] for p in out.predictions]
            verdicts = judge_pairs(
                model, tok, task, questions, [p["prediction"] for p in base], cand
            )
            for p, v in zip(out.predictions, verdicts, strict=True):
                p["judge"] = v
        for key in ("win", "tie", "loss"):
            out.metrics[f"{key}_rate"] = MetricScores([float(v["result"] == key) for v in verdicts])
        log(
            f"  {task.name} judged {name}: "
            + ", ".join(f"{k}={m.value:.3g}" for k, m in out.metrics.items())
        )
    del model, tok
