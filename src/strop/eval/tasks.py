"""The eval task types: ``TASKS`` maps a task's ``type`` to its runner, ``LOADERS`` to the
function that reads its examples.

A runner turns (model, tokenizer, task, examples, seed) into a ``TaskOutput`` of per-example
metric scores; each lives in its own module (``generation``, ``perplexity``, ...), and this
registry is the one module that imports them all, so nothing below it imports it back.
"""

from __future__ import annotations

from collections.abc import Callable

from strop.data.records import Record
from strop.data.validate import load_records
from strop.errors import StropError
from strop.eval.classification import load_classification_examples, run_classification
from strop.eval.config import PerplexityTask, TaskBase
from strop.eval.generation import run_generation
from strop.eval.judge import run_judge_answers
from strop.eval.multiple_choice import load_mc_examples, run_multiple_choice
from strop.eval.perplexity import run_perplexity
from strop.eval.preference import run_preference
from strop.eval.retrieval import load_retrieval_examples, run_retrieval
from strop.eval.reward import run_reward
from strop.eval.scores import TaskOutput

# The record kind strop.data reads a task's rows as (perplexity: its ``kind``).
_RECORD_KINDS = {
    "generation": "chat",
    "judge": "chat",
    "preference": "preference",
    "reward": "preference",
}


def load_task_records(task: TaskBase) -> list[Record]:
    """Rows in any format `strop train` reads, none of them bad, the first ``limit``."""
    kind = task.kind if isinstance(task, PerplexityTask) else _RECORD_KINDS[task.type]
    records = load_records(task.data, task.format, kind=kind, max_bad_fraction=0.0).records
    return records[: task.limit] if task.limit else records


LOADERS: dict[str, Callable[..., list]] = {
    "generation": load_task_records,
    "perplexity": load_task_records,
    "multiple_choice": load_mc_examples,
    "preference": load_task_records,
    "classification": load_classification_examples,
    "reward": load_task_records,
    "judge": load_task_records,
    "retrieval": load_retrieval_examples,
}


def load_examples(task: TaskBase) -> list:
    """The task's examples; a file without any is an error, never a score of nan."""
    examples = LOADERS[task.type](task)
    if not examples:
        data = task.data if isinstance(task.data, str) else ", ".join(task.data)
        raise StropError(f"task {task.name!r}: {data}: no examples to score (the file is empty)")
    return examples


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
