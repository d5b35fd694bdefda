"""Class 2, bad inputs: the case record, the base config and rows the cases vary, checks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .fixtures import chat_rows, train_config
from .runner import Proc


@dataclass
class Case:
    id: str
    verb: str
    what: str
    argv: list[str]
    files: dict = field(default_factory=dict)  # name -> str | bytes | None (a dir) | callable(d)
    expect: str = "refuse"  # refuse | quarantine | accept
    names: tuple[str, ...] = ()  # the sentence must contain one of these (file / key / field)
    check: object = None  # callable(case_dir, proc) -> list of problems (quarantine / accept)


def _y(tree) -> str:
    return yaml.safe_dump(tree, sort_keys=False)


def sft_cfg(**sections) -> str:
    """The base training config (tiny-llama, sft, full, one step) with sections updated."""
    return _y(train_config("run", "chat.jsonl", "sft", **sections))


BAD_JSON = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"'


def _rows_text(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _good(n=40):
    return chat_rows(n, seed=3)


def _msgs(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


ASSISTANT_FIRST = _msgs(("assistant", "Hello!"), ("user", "hi"), ("assistant", "How can I help?"))
GPT_FIRST = {
    "conversations": [
        {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "hi"},
        {"from": "gpt", "value": "How can I help?"},
    ]
}
SHAREGPT_GOOD = [
    {
        "conversations": [
            {"from": "human", "value": f"question {i}"},
            {"from": "gpt", "value": f"answer {i}"},
        ]
    }
    for i in range(40)
]


def _quarantined(origin: str, qfile: str, printed: bool = True):
    """A check: exit 0, ``origin`` (file:line) printed (``printed``; else the quarantine file's
    path and a count of bad rows are printed), and ``qfile`` holds that row."""

    def check(d: Path, p: Proc) -> list[str]:
        problems = []
        said = p.out + p.err
        if printed and origin not in said:
            problems.append(f"output does not name {origin}")
        if not printed and (qfile not in said or not re.search(r"\(\d+ malformed\)", said)):
            problems.append(f"output does not count the bad rows and point to {qfile}")
        q = d / qfile
        if not q.exists():
            problems.append(f"no quarantine file {qfile}")
        elif origin.split(":")[-1] not in q.read_text():
            problems.append(f"{qfile} does not hold line {origin}")
        return problems

    return check


def _scored(task: str):
    """A check for eval: the results file it says it wrote names ``task`` with a finite score."""

    def check(d: Path, p: Proc) -> list[str]:
        m = re.search(r"wrote (\S+results\.json)", p.out)
        if not m or not (d / m.group(1)).exists():
            return ["no results.json written"]
        text = (d / m.group(1)).read_text()
        if task not in text:
            return [f"results.json lacks task {task!r}"]
        return ["a score is NaN"] if "NaN" in text else []

    return check


def dup_cfg() -> str:
    """The base config with model.name given twice."""
    return sft_cfg().replace("  name: tiny-llama\n", "  name: tiny-llama\n  name: tiny-qwen2\n")


def train_adder(C: list[Case]):
    """``t(id, what, overrides, files, cfg, **kw)``: a `strop train c.yaml` case appended to C."""

    def t(id, what, overrides=(), files=None, cfg=None, **kw):
        f = dict(files or {})
        if cfg is not None:
            f["c.yaml"] = cfg
        C.append(Case(id, "train", what, ["train", "c.yaml", *overrides], f, **kw))

    return t
