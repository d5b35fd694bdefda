"""train.eval_tasks: `strop eval` tasks scored on the model being trained, logged as
eval/<task>/<metric>; the final values equal `strop eval` on the saved model; bad task specs
stop the run at config load, naming the entry."""

from __future__ import annotations

import json

import pytest

from strop.config import load_config
from strop.errors import StropError
from strop.eval.config import load_eval_config
from strop.eval.runner import run_eval
from strop.train.loop import train
from strop.train.task_eval import parse_eval_tasks
from tests.helpers import tiny_config, write_chat_jsonl


def _tasks(data):
    return [
        {"name": "ppl", "type": "perplexity", "data": str(data), "limit": 6},
        {
            "name": "chat",
            "type": "generation",
            "data": str(data),
            "limit": 4,
            "max_new_tokens": 4,
            "metrics": ["exact_match", "token_f1"],
        },
    ]


def test_tasks_run_during_training_and_match_strop_eval_on_the_saved_model(tmp_path):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=12, seed=3)
    raw = tiny_config(
        tmp_path / "run",
        data,
        method={"name": "lora", "r": 4, "alpha": 8},
        train={"max_steps": 4, "eval_every": 2, "eval_tasks": _tasks(data)},
    )
    res = train(load_config(None, raw=raw))
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/ppl/loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for key in (
        "eval/ppl/ppl",
        "eval/ppl/bits_per_byte",
        "eval/chat/exact_match",
        "eval/chat/token_f1",
    ):
        assert key in evals[-1], key
    assert evals[1]["eval/ppl/loss"] < evals[0]["eval/ppl/loss"]  # it trains on this data

    eval_raw = {
        "models": {"tuned": {"model": "tiny-llama", "adapter": str(res.final_dir)}},
        "output_dir": str(tmp_path / "eval"),
        "tasks": _tasks(data),
    }
    (tmp_path / "eval.yaml").write_text(json.dumps(eval_raw))
    out = run_eval(load_eval_config(tmp_path / "eval.yaml"))
    results = json.loads((out / "results.json").read_text())["tasks"]
    for task, metric in (("ppl", "loss"), ("chat", "token_f1"), ("chat", "exact_match")):
        want = results[task]["results"]["tuned"][metric]["value"]
        assert evals[-1][f"eval/{task}/{metric}"] == pytest.approx(want, rel=1e-5), (task, metric)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"name": "j", "type": "judge", "data": "x.jsonl"},
            "train.eval_tasks.0: type 'judge' is not run during training",
        ),
        (
            {"name": "p", "type": "perplexity", "data": "x.jsonl", "limt": 3},
            "train.eval_tasks.0: unknown key 'limt'; did you mean 'limit'",
        ),
        (
            {"name": "p", "type": "perplexity", "data": "x.jsonl", "shots": 2},
            r"train.eval_tasks.0: task 'p': unknown key 'shots' \(multiple_choice tasks only\)",
        ),
        ("ppl", "train.eval_tasks.0: Input should be a valid dictionary"),
    ],
)
def test_bad_task_specs_are_refused_naming_the_entry(tmp_path, task, message):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=4)
    raw = tiny_config(tmp_path / "run", data, train={"eval_tasks": [task]})
    with pytest.raises(StropError, match=message):  # strop train checks them before any model work
        parse_eval_tasks(load_config(None, raw=raw).train.eval_tasks, "config")
