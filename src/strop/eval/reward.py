"""The ``reward`` eval task: scores from a reward model trained by ``stage: rm``.

Two uses, chosen by whether the task names a ``reward_model``:

- **Reward-model columns** (no ``reward_model``): every evaluated model *is* a stage-rm output
  (``model: runs/rm/final`` or ``adapter: runs/rm/final``) and is judged on held-out preference
  pairs: ``accuracy`` (share of pairs whose chosen answer scores higher), ``margin``
  (r(chosen) - r(rejected)), ``reward_chosen``, ``reward_rejected``.
- **Policy columns** (``reward_model: DIR``): every evaluated model answers the pairs' prompts
  and that one reward model scores the answers: ``reward`` (mean score), ``win_vs_chosen`` and
  ``win_vs_rejected`` (share of prompts where the answer outscores the pair's chosen /
  rejected answer). The reward model's own pairwise accuracy on the same pairs is reported
  once (``tasks.<task>.reward_model``), so a reader knows how far to trust its scores.

Scoring reuses ``strop.reward`` (the chat template and last-token value head of training).
"""

from __future__ import annotations

import torch

from strop.errors import StropError
from strop.eval.config import RewardTask
from strop.eval.generation import generation_params
from strop.eval.scores import MetricScores, TaskOutput
from strop.infer import generate
from strop.reward import load_reward_model, score

_RM_CACHE: dict[tuple[str, str], tuple] = {}


def reward_model_for(path: str, dtype: str = "auto"):
    """The task's fixed reward model, loaded once per eval run (``clear_cache`` frees it)."""
    key = (path, dtype)
    if key not in _RM_CACHE:
        model, tok = load_reward_model(path, dtype)
        if torch.cuda.is_available():
            model = model.to("cuda")
        _RM_CACHE[key] = (model, tok, {})
    return _RM_CACHE[key]


def clear_cache() -> None:
    _RM_CACHE.clear()


def _conv(messages) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def pair_scores(model, tok, examples, batch_size: int) -> tuple[list[float], list[float]]:
    """(r(prompt + chosen), r(prompt + rejected)) per pair."""
    chosen = [_conv([*r.messages, *r.chosen]) for r in examples]
    rejected = [_conv([*r.messages, *r.rejected]) for r in examples]
    return score(model, tok, chosen, batch_size), score(model, tok, rejected, batch_size)


def run_reward(model, tokenizer, task: RewardTask, examples: list, seed: int) -> TaskOutput:
    if not examples:
        raise StropError(f"task {task.name!r}: no preference pair to score")
    if task.reward_model is None:  # the column is the reward model
        r_c, r_r = pair_scores(model, tokenizer, examples, task.batch_size)
        metrics = {
            "accuracy": MetricScores([float(c > r) for c, r in zip(r_c, r_r, strict=True)]),
            "margin": MetricScores([c - r for c, r in zip(r_c, r_r, strict=True)]),
            "reward_chosen": MetricScores(r_c),
            "reward_rejected": MetricScores(r_r),
        }
        predictions = [
            {"origin": e.origin, "reward_chosen": c, "reward_rejected": r}
            for e, c, r in zip(examples, r_c, r_r, strict=True)
        ]
        return TaskOutput(metrics, predictions)
    return _score_policy(model, tokenizer, task, examples, seed)


def _score_policy(model, tokenizer, task: RewardTask, examples: list, seed: int) -> TaskOutput:
    params = generation_params(task, seed)
    answers = generate(model, tokenizer, [_conv(r.messages) for r in examples], params)
    rm, rm_tok, memo = reward_model_for(task.reward_model)
    if task.name not in memo:  # the pairs are the same for every column: score them once
        memo[task.name] = pair_scores(rm, rm_tok, examples, task.batch_size)
    r_c, r_r = memo[task.name]
    convs = [
        [*_conv(r.messages), {"role": "assistant", "content": a}]
        for r, a in zip(examples, answers, strict=True)
    ]
    r_a = score(rm, rm_tok, convs, task.batch_size)
    metrics = {
        "reward": MetricScores(r_a),
        "win_vs_chosen": MetricScores([float(a > c) for a, c in zip(r_a, r_c, strict=True)]),
        "win_vs_rejected": MetricScores([float(a > r) for a, r in zip(r_a, r_r, strict=True)]),
    }
    predictions = [
        {"origin": e.origin, "prediction": a, "reward": s, "reward_chosen": c, "reward_rejected": r}
        for e, a, s, c, r in zip(examples, answers, r_a, r_c, r_r, strict=True)
    ]
    rm_info = {
        "path": task.reward_model,
        "pairwise_accuracy": sum(c > r for c, r in zip(r_c, r_r, strict=True)) / len(r_c),
        "mean_reward_chosen": sum(r_c) / len(r_c),
        "mean_reward_rejected": sum(r_r) / len(r_r),
        "n": len(r_c),
    }
    return TaskOutput(metrics, predictions, breakdown={"reward_model": rm_info})
