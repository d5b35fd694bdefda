"""Typed eval task specs: each task type has its own class holding only the keys that type
reads, chosen by ``type``; a key of another type is refused naming the key and the task."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from strop.errors import StropError
from strop.eval.config import (
    TASK_SPECS,
    ClassificationTask,
    GenerationTask,
    PerplexityTask,
    RetrievalTask,
    RewardTask,
    TaskBase,
    load_eval_config,
)

DOCS = Path(__file__).parents[2] / "docs" / "eval.md"

COMMON = {"name", "type", "data", "limit", "general"}
DECODING = {"batch_size", "max_new_tokens", "temperature", "top_p", "stop"}

# Task type -> the keys it has besides COMMON: what its runner (and its loader) reads.
OWN_KEYS = {
    "generation": {
        "format",
        *DECODING,
        "metrics",
        "n_samples",
        "pass_at_k",
        "pass_check",
        "pass_pattern",
        "bleu_tokenize",
    },
    "perplexity": {"format", "max_length", "kind", "mask"},
    "multiple_choice": {"batch_size", "max_length", "dev", "shots", "score", "chat_template"},
    "preference": {"format", "batch_size", "max_length"},
    "classification": {*DECODING, "max_length", "labels", "predict", "prompt", "chat_template"},
    "reward": {"format", *DECODING, "reward_model"},
    "judge": {"format", *DECODING, "max_length", "judge", "judge_adapter", "chat_template"},
    "retrieval": {"batch_size", "max_length", "corpus", "embedder", "recall_at"},
}


def test_every_type_has_a_class_with_exactly_its_keys():
    assert set(TASK_SPECS) == set(OWN_KEYS)
    for name, cls in TASK_SPECS.items():
        assert set(cls.model_fields) == COMMON | OWN_KEYS[name], name
        assert issubclass(cls, TaskBase)


def test_docs_list_each_types_keys():
    table = DOCS.read_text().split("| type | its keys |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.*) \|$", table, re.M)
    documented = {t: set(re.findall(r"`(\w+)`", keys)) for t, keys in rows}
    assert documented == OWN_KEYS


def _load(task: dict):
    return load_eval_config(None, [], raw={"models": {"m": "tiny-llama"}, "tasks": [task]})


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"type": "perplexity", "shots": 2},
            "tasks.0 (perplexity): task 't': unknown key 'shots' (multiple_choice tasks only)",
        ),
        (
            {"type": "generation", "mask": "all"},
            "tasks.0 (generation): task 't': unknown key 'mask' (perplexity tasks only)",
        ),
        (
            {"type": "multiple_choice", "format": "alpaca"},
            "task 't': unknown key 'format' (generation / perplexity / preference / reward / "
            "judge tasks only)",
        ),
        (
            {"type": "retrieval", "chat_template": True},
            "task 't': unknown key 'chat_template' (multiple_choice / classification / judge "
            "tasks only)",
        ),
        (
            {"type": "perplexity", "batch_size": 4},
            "task 't': unknown key 'batch_size' (generation / multiple_choice / preference / "
            "classification / reward / judge / retrieval tasks only)",
        ),
        ({"type": "preference", "max_new_tokens": 4}, "unknown key 'max_new_tokens'"),
    ],
)
def test_a_key_of_another_type_is_refused_naming_it_and_the_task(tmp_path, task, message):
    with pytest.raises(StropError) as err:
        _load({"name": "t", "data": str(tmp_path / "d.jsonl"), **task})
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"type": "perplexity", "limt": 3},
            ["tasks.0 (perplexity): unknown key 'limt'; did you mean 'limit'?"],
        ),
        (
            {"type": "generatoin"},
            [
                "tasks.0.type: unknown type 'generatoin' (known: generation, perplexity, ",
                "; did you mean 'generation'?",
            ],
        ),
        ({}, ["tasks.0.type: required (one of generation, perplexity, "]),
    ],
)
def test_typos_and_bad_types_name_the_key(tmp_path, task, message):
    with pytest.raises(StropError) as err:
        _load({"name": "t", "data": str(tmp_path / "d.jsonl"), **task})
    for part in message:
        assert part in str(err.value)


def test_each_task_validates_as_its_types_class(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    cfg = load_eval_config(
        None,
        [],
        raw={
            "models": {"m": "tiny-llama"},
            "tasks": [
                {"name": "g", "type": "generation", "data": str(data)},
                {"name": "p", "type": "perplexity", "data": str(data), "kind": "text"},
                {"name": "c", "type": "classification", "data": str(data), "labels": ["a", "b"]},
                {"name": "r", "type": "retrieval", "data": str(data), "corpus": str(data)},
            ],
        },
    )
    types = [type(t) for t in cfg.tasks]
    assert types == [GenerationTask, PerplexityTask, ClassificationTask, RetrievalTask]
    assert cfg.tasks[0].metrics == ["exact_match", "token_f1"]
    # TaskBase.model_validate picks the class by type, as the eval config does
    task = TaskBase.model_validate({"name": "p", "type": "perplexity", "data": "x"})
    assert isinstance(task, PerplexityTask) and task.mask == "assistant"
    assert PerplexityTask.model_validate({"name": "p", "type": "perplexity", "data": "x"}) == task


def test_model_kind_follows_the_task():
    assert RewardTask(name="r", type="reward", data="x").model_kind == "reward"
    assert RewardTask(name="r", type="reward", data="x", reward_model="rm").model_kind == "lm"
    mini = RetrievalTask(name="q", type="retrieval", data="x", corpus="c", embedder="minilm")
    assert mini.model_kind == "none"
    assert PerplexityTask(name="p", type="perplexity", data="x").model_kind == "lm"
