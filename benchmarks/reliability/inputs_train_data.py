"""Class 2, bad inputs: `strop train` (rows, models, stages, GRPO rewards)."""

from __future__ import annotations

from .fixtures import train_config
from .inputs_common import (
    ASSISTANT_FIRST,
    GPT_FIRST,
    SHAREGPT_GOOD,
    Case,
    _good,
    _msgs,
    _quarantined,
    _rows_text,
    _y,
    train_adder,
)


def train_rows(C: list[Case]) -> None:
    """Rows that are wrong; eval data, models."""
    t = train_adder(C)
    t(
        "t-data-content-null",
        "assistant content null in every row",
        ["data.train=null.jsonl"],
        files={
            "null.jsonl": _rows_text(_msgs(("user", "q"), ("assistant", None)) for _ in range(10))
        },
        names=("null.jsonl",),
    )
    t(
        "t-data-role-unknown",
        "an unknown role ('bot') in every row",
        ["data.train=bot.jsonl"],
        files={"bot.jsonl": _rows_text(_msgs(("user", "q"), ("bot", "a")) for _ in range(10))},
        names=("bot.jsonl",),
    )
    t(
        "t-data-assistant-first-all",
        "every conversation opens with the assistant",
        ["data.train=af.jsonl"],
        files={"af.jsonl": _rows_text([ASSISTANT_FIRST] * 10)},
        names=("af.jsonl",),
    )
    t(
        "t-data-assistant-first-one",
        "one assistant-first row of 41 (default threshold)",
        ["data.train=af.jsonl"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        names=("af.jsonl",),
    )
    t(
        "t-data-assistant-first-q",
        "one assistant-first row of 41, max_bad_fraction=0.05",
        ["data.train=af.jsonl", "data.max_bad_fraction=0.05"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        expect="quarantine",
        check=_quarantined("af.jsonl:41", "run/quarantine-train.jsonl"),
    )
    t(
        "t-data-gpt-first-all",
        "ShareGPT, every row opens with gpt",
        ["data.train=sg.jsonl"],
        files={"sg.jsonl": _rows_text([GPT_FIRST] * 10)},
        names=("sg.jsonl",),
    )
    t(
        "t-data-gpt-first-q",
        "ShareGPT, one gpt-first row of 41, max_bad_fraction=0.05",
        ["data.train=sg.jsonl", "data.max_bad_fraction=0.05"],
        files={"sg.jsonl": _rows_text(SHAREGPT_GOOD + [GPT_FIRST])},
        expect="quarantine",
        check=_quarantined("sg.jsonl:41", "run/quarantine-train.jsonl"),
    )
    t(
        "t-data-no-assistant",
        "no assistant turn in any row",
        ["data.train=na.jsonl"],
        files={"na.jsonl": _rows_text(_msgs(("user", "anyone?")) for _ in range(10))},
        names=("na.jsonl",),
    )
    t(
        "t-data-system-only",
        "system message only",
        ["data.train=so.jsonl"],
        files={"so.jsonl": _rows_text(_msgs(("system", "be brief")) for _ in range(10))},
        names=("so.jsonl",),
    )
    t(
        "t-data-eval-missing",
        "data.eval a missing file",
        ["data.eval=gone.jsonl"],
        names=("gone.jsonl",),
    )
    t("t-data-eval-frac", "data.eval fraction 1.5", ["data.eval=1.5"], names=("data.eval",))
    t(
        "t-data-badfrac",
        "max_bad_fraction 2",
        ["data.max_bad_fraction=2"],
        names=("data.max_bad_fraction",),
    )
    t(
        "t-resume-bad",
        "train.resume a path that is no checkpoint",
        ["train.resume=maybe"],
        names=("train.resume",),
    )
    t("t-model-unknown", "unknown model name", ["model.name=tiny-lama"], names=("tiny-lama",))
    t(
        "t-model-gguf",
        "a .gguf path that does not exist",
        ["model.name=./nope.gguf"],
        names=("nope.gguf",),
    )
    t(
        "t-model-emptydir",
        "model a directory without a model",
        ["model.name=./emptydir"],
        names=("emptydir",),
    )
    t("t-model-file", "model a text file", ["model.name=./afile"], names=("afile",))


def train_stages(C: list[Case]) -> None:
    """Data for another stage."""
    t = train_adder(C)
    t(
        "t-dpo-sft-data",
        "dpo on chat rows (no chosen/rejected)",
        ["stage=dpo"],
        names=("chat.jsonl", "chosen"),
    )
    t(
        "t-dpo-no-rejected",
        "dpo rows without 'rejected'",
        ["stage=dpo", "data.train=p.jsonl"],
        files={"p.jsonl": _rows_text({"prompt": "q", "chosen": "a"} for _ in range(10))},
        names=("p.jsonl", "rejected"),
    )
    t(
        "t-dpo-same",
        "dpo rows where chosen == rejected (all)",
        ["stage=dpo", "data.train=p.jsonl"],
        files={
            "p.jsonl": _rows_text(
                {"prompt": "q", "chosen": "a", "rejected": "a"} for _ in range(10)
            )
        },
        names=("p.jsonl",),
    )
    t(
        "t-kto-label",
        "kto label 'maybe'",
        ["stage=kto", "data.train=k.jsonl"],
        files={
            "k.jsonl": _rows_text(
                {"prompt": "q", "completion": "a", "label": "maybe"} for _ in range(10)
            )
        },
        names=("k.jsonl", "label"),
    )
    t("t-rm-sft-data", "rm on chat rows", ["stage=rm"], names=("chat.jsonl", "chosen"))
    t(
        "t-pt-chat-none",
        "pt on rows without text",
        ["stage=pt", "data.train=qa.jsonl"],
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(10))},
        names=("qa.jsonl",),
    )


def train_grpo(C: list[Case]) -> None:
    """GRPO rewards."""
    t = train_adder(C)

    def g(id, what, grpo, overrides=(), **kw):
        base = {"group_size": 2, "max_new_tokens": 4, "rewards": ["probe_rewards:letter_share"]}
        cfg = _y(train_config("run", "prompts.jsonl", "grpo", grpo={**base, **grpo}))
        t(id, what, overrides, cfg=cfg, **kw)

    g(
        "t-grpo-dotted",
        "reward as a dotted path",
        {"rewards": ["mypkg.rewards.brevity"]},
        names=("module:function", "mypkg"),
    )
    g("t-grpo-unknown", "unknown reward name", {"rewards": ["nope"]}, names=("nope",))
    g("t-grpo-typo", "reward name misspelt", {"rewards": ["math_anser"]}, names=("math_anser",))
    g(
        "t-grpo-nomodule",
        "module:function whose module is missing",
        {"rewards": ["nomod:f"]},
        names=("nomod",),
    )
    g(
        "t-grpo-nofunc",
        "module:function whose function is missing",
        {"rewards": ["probe_rewards:nofunc"]},
        names=("nofunc",),
    )
    g("t-grpo-none", "no rewards", {"rewards": []}, names=("grpo.rewards",))
    g("t-grpo-group1", "group_size 1", {"group_size": 1}, names=("grpo.group_size",))
    g(
        "t-grpo-weight-nan",
        "reward weight .nan",
        {"rewards": [{"name": "probe_rewards:letter_share", "weight": float("nan")}]},
        names=("weight", "grpo.rewards"),
    )
    g(
        "t-grpo-field",
        "math_answer on rows without 'answer'",
        {"rewards": [{"name": "math_answer", "args": {"field": "solution"}}]},
        names=("solution",),
    )
    g(
        "t-grpo-code-tests",
        "code_tests on rows without 'tests'",
        {"rewards": ["code_tests"]},
        names=("tests",),
    )
    g(
        "t-grpo-prompt-method",
        "a prompt-tuning method under grpo",
        {},
        ["method.name=prompt"],
        names=("stage grpo", "grpo", "method"),
    )
    g(
        "t-grpo-chat-data",
        "grpo on rows without a prompt",
        {},
        ["data.train=qa.jsonl"],
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(10))},
        names=("qa.jsonl",),
    )
    t(
        "t-eval-tasks-missing",
        "train.eval_tasks file missing",
        ["train.eval_tasks=gone.yaml"],
        names=("gone.yaml", "train.eval_tasks"),
    )
