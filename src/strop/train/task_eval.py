"""`strop eval` tasks inside training (``train.eval_tasks``): the model being trained is scored
every ``train.eval_every`` steps and at the end, with the same task code and the same
definitions as `strop eval`, and each metric is logged as ``eval/<task>/<metric>``.

Only tasks that need nothing but the trained model run here (generation, perplexity,
multiple_choice, classification, retrieval with the model's own embeddings); comparisons with
other models (judge, reward models) belong to `strop eval`. Examples are read once, before the
first step, so a bad file stops the run at once instead of at the first eval.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError

from strop.config.load import format_validation_error
from strop.errors import StropError
from strop.eval.config import TASK_SPECS, RetrievalTask, TaskBase
from strop.eval.tasks import TASKS, load_examples

IN_TRAINING_TYPES = ("generation", "perplexity", "multiple_choice", "classification", "retrieval")


def parse_eval_tasks(raw: list[dict[str, Any]], source: str) -> list[TaskBase]:
    """Validate ``train.eval_tasks`` entries as `strop eval` task specs (the class their
    ``type`` names); errors name the entry."""
    specs: list[TaskBase] = []
    names = set()
    for i, item in enumerate(raw):
        where = f"{source}: train.eval_tasks.{i}"
        if not isinstance(item, dict):
            raise StropError(f"{where}: a task is a mapping (name, type, data, ...)")
        if item.get("type") not in IN_TRAINING_TYPES:
            raise StropError(
                f"{where}: type {item.get('type')!r} is not run during training (judge and "
                f"reward compare models: use `strop eval`); during training: "
                f"{', '.join(IN_TRAINING_TYPES)}"
            )
        cls = TASK_SPECS[item["type"]]
        try:
            spec = cls.model_validate(item)
        except ValidationError as exc:
            raise StropError(format_validation_error(exc, where, cls)) from None
        if isinstance(spec, RetrievalTask) and spec.embedder != "model":
            raise StropError(f"{where}: during training, retrieval uses embedder: model")
        if spec.name in names:
            raise StropError(f"{where}: task name {spec.name!r} is used twice")
        names.add(spec.name)
        specs.append(spec)
    return specs


class TaskEvaluator:
    """Holds the parsed tasks and their examples; call it with the model being trained."""

    def __init__(self, raw: list[dict[str, Any]], source: str, seed: int):
        self.seed = seed
        self.tasks = [(spec, load_examples(spec)) for spec in parse_eval_tasks(raw, source)]

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def __call__(self, model, tokenizer) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        try:
            with torch.no_grad():
                for spec, examples in self.tasks:
                    result = TASKS[spec.type](model, tokenizer, spec, examples, self.seed)
                    for metric, scores in result.metrics.items():
                        out[f"eval/{spec.name}/{metric}"] = float(scores.value)
        finally:
            model.train(was_training)
        return out
