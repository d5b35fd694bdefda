"""Class 2, bad inputs: `strop train` (keys, types, numbers, YAML, overrides, paths)."""

from __future__ import annotations

import json

from .inputs_common import (
    BAD_JSON,
    Case,
    _good,
    _quarantined,
    _rows_text,
    dup_cfg,
    sft_cfg,
    train_adder,
)


def train_keys(C: list[Case]) -> None:
    """Keys, types and numbers."""
    t = train_adder(C)
    t(
        "t-key-top",
        "unknown top-level section (typo 'trian')",
        cfg=sft_cfg().replace("\ntrain:", "\ntrian:"),
        names=("trian",),
    )
    t(
        "t-key-section",
        "unknown key in a section (train.lr_rate)",
        cfg=sft_cfg(train={"lr_rate": 1e-4}),
        names=("train.lr_rate",),
    )
    t("t-key-override", "typo in an override key", ["train.lrr=1e-4"], names=("train.lrr",))
    t("t-key-model", "typo in model section", ["model.nmae=tiny-llama"], names=("model.nmae",))
    t("t-key-data", "typo in data section", ["data.max_len=64"], names=("data.max_len",))
    t(
        "t-method-param",
        "a LoRA parameter misspelt",
        ["method.name=lora", "method.rank=8"],
        names=("rank",),
    )
    t(
        "t-method-param-other",
        "a LoRA parameter on method full",
        ["method.r=8"],
        names=("method", "'r'"),
    )
    t("t-method-name", "method name misspelt", ["method.name=lorra"], names=("lorra",))
    t("t-stage", "stage misspelt", ["stage=sftt"], names=("stage",))
    t(
        "t-type-bs",
        "batch_size not a number",
        ["train.batch_size=many"],
        names=("train.batch_size",),
    )
    t("t-type-steps", "max_steps a fraction", ["train.max_steps=1.5"], names=("train.max_steps",))
    t("t-type-lr-list", "lr a list", ["train.lr=[1e-4, 2e-4]"], names=("train.lr",))
    t("t-type-packing", "packing not a boolean", ["data.packing=maybe"], names=("data.packing",))
    t("t-type-model", "model.name a number", ["model.name=5"], names=("model.name", "5"))
    t("t-type-section", "a section given as a string", ["train=fast"], names=("train",))
    t("t-bs-zero", "batch_size 0", ["train.batch_size=0"], names=("train.batch_size",))
    t("t-bs-neg", "batch_size negative", ["train.batch_size=-4"], names=("train.batch_size",))
    t("t-steps-neg", "max_steps negative", ["train.max_steps=-1"], names=("train.max_steps",))
    t("t-epochs-neg", "epochs negative", ["train.epochs=-1"], names=("train.epochs",))
    t("t-keep-zero", "keep_last 0", ["train.keep_last=0"], names=("train.keep_last",))
    t("t-maxlen-zero", "max_length 0", ["data.max_length=0"], names=("data.max_length",))
    t(
        "t-lora-r0",
        "LoRA rank 0",
        ["method.name=lora", "method.r=0"],
        names=("method.r", "'r'", " r"),
    )
    t("t-precision", "precision unknown", ["train.precision=fp8x"], names=("train.precision",))
    t("t-lr-inf", "lr = .inf", ["train.lr=.inf"], names=("train.lr",))
    t("t-lr-nan", "lr = .nan", ["train.lr=.nan"], names=("train.lr",))
    t(
        "t-lr-neginf-yaml",
        "lr -.inf written in the YAML file",
        cfg=sft_cfg(train={"lr": float("-inf")}),
        names=("train.lr",),
    )
    t("t-lr-string-inf", "lr 'inf' as a quoted string", ["train.lr='inf'"], names=("train.lr",))
    t(
        "t-gradnorm-nan",
        "max_grad_norm .nan",
        ["train.max_grad_norm=.nan"],
        names=("train.max_grad_norm",),
    )
    t("t-warmup-inf", "warmup .inf", ["train.warmup=.inf"], names=("train.warmup",))
    t(
        "t-dropout-nan",
        "LoRA dropout .nan",
        ["method.name=lora", "method.dropout=.nan"],
        names=("dropout",),
    )
    t(
        "t-lr-absurd",
        "lr 1e30 (trains to nonsense)",
        ["train.lr=1e30", "train.max_steps=4"],
        names=("non-finite", "not finite", "train.lr"),
    )
    t("t-lr-negative", "lr negative", ["train.lr=-1e-3"], names=("train.lr",))


def train_yaml(C: list[Case]) -> None:
    """YAML and overrides."""
    t = train_adder(C)
    dup = dup_cfg()
    t(
        "t-dup-key",
        "duplicate key in the YAML (model.name twice)",
        cfg=dup,
        names=("duplicate key",),
    )
    t(
        "t-dup-section",
        "duplicate top-level section (train: twice)",
        cfg=sft_cfg() + "train:\n  lr: 0.1\n",
        names=("duplicate key",),
    )
    t("t-other-stage-override", "a dpo section under stage sft", ["dpo.beta=0.5"], names=("dpo",))
    t(
        "t-other-stage-yaml",
        "a grpo section under stage sft",
        cfg=sft_cfg(grpo={"group_size": 4, "rewards": ["exact_match"]}),
        names=("grpo",),
    )
    t(
        "t-packing-dpo",
        "packing for dpo",
        ["stage=dpo", "data.train=pref.jsonl", "data.packing=true"],
        names=("data.packing",),
    )
    t("t-ov-empty-key", "override '=5'", ["=5"], names=("=5",))
    t("t-ov-empty-part", "override 'a..b=1'", ["a..b=1"], names=("a..b",))
    t("t-ov-bad-yaml", "override 'x=['", ["x=["], names=("x=[",))
    t(
        "t-ov-bad-yaml-known",
        "override 'train.lr=[' (a known key, bad value)",
        ["train.lr=["],
        names=("train.lr",),
    )
    t("t-ov-no-equals", "override without '='", ["train.lr"], names=("train.lr",))
    t("t-ov-trailing-dot", "override 'train.=1'", ["train.=1"], names=("train.=1", "train."))
    t("t-ov-unknown-section", "override of an unknown section", ["foo.bar=1"], names=("foo",))
    t("t-ov-into-scalar", "override reaching into a scalar", ["train.lr.x=1"], names=("train.lr",))
    C.append(
        Case(
            "t-cfg-dir",
            "train",
            "config path is a directory",
            ["train", "emptydir"],
            names=("emptydir",),
        )
    )
    C.append(
        Case(
            "t-cfg-missing",
            "train",
            "config file missing",
            ["train", "nope.yaml"],
            names=("nope.yaml",),
        )
    )
    t(
        "t-cfg-binary",
        "config file is binary, not YAML",
        cfg=bytes(range(256)) * 4,
        names=("c.yaml",),
    )
    t("t-cfg-syntax", "config YAML syntax error", cfg="train:\n  lr: [1,\n", names=("c.yaml",))
    t(
        "t-cfg-tabs",
        "config indented with a tab",
        cfg="model:\n\tname: tiny-llama\n",
        names=("c.yaml",),
    )
    t("t-cfg-list", "config is a YAML list", cfg="- model\n- train\n", names=("c.yaml",))
    t("t-cfg-scalar", "config is a bare string", cfg="hello\n", names=("c.yaml",))
    t("t-cfg-empty", "config file empty", cfg="", names=("c.yaml", "data.train"))
    C.append(
        Case(
            "t-cfg-json",
            "train",
            "config given as a JSONL data file",
            ["train", "chat.jsonl"],
            names=("chat.jsonl",),
        )
    )


def train_paths(C: list[Case]) -> None:
    """Config, output and data paths; data files that cannot be read."""
    t = train_adder(C)
    t("t-out-file", "output_dir is a file", ["train.output_dir=afile"], names=("train.output_dir",))
    t(
        "t-out-under-file",
        "output_dir under a file",
        ["train.output_dir=afile/run"],
        names=("train.output_dir",),
    )
    t("t-out-empty", "output_dir empty", ["train.output_dir=''"], names=("train.output_dir",))
    t(
        "t-data-missing",
        "data.train missing",
        ["data.train=missing.jsonl"],
        names=("missing.jsonl",),
    )
    t(
        "t-data-empty",
        "data.train empty",
        ["data.train=empty.jsonl"],
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    t(
        "t-data-blank-lines",
        "data.train only blank lines",
        ["data.train=blank.jsonl"],
        files={"blank.jsonl": "\n\n  \n"},
        names=("blank.jsonl",),
    )
    t("t-data-dir", "data.train a directory", ["data.train=emptydir"], names=("emptydir",))
    t("t-data-number", "data.train a number", ["data.train=5"], names=("data.train", "5"))
    t(
        "t-data-list-missing",
        "data.train a list with a missing file",
        ["data.train=[chat.jsonl, gone.jsonl]"],
        names=("gone.jsonl",),
    )
    t(
        "t-data-all-bad-json",
        "every line bad JSON",
        ["data.train=bad.jsonl"],
        files={"bad.jsonl": (BAD_JSON + "\n") * 30},
        names=("bad.jsonl",),
    )
    t(
        "t-data-one-bad-json",
        "one bad JSON line of 41 (default threshold 1%)",
        ["data.train=bad.jsonl"],
        files={"bad.jsonl": _rows_text(_good()) + BAD_JSON + "\n"},
        names=("bad.jsonl:41", "bad.jsonl"),
    )
    t(
        "t-data-one-bad-json-q",
        "one bad JSON line of 41 under max_bad_fraction=0.05",
        ["data.train=bad.jsonl", "data.max_bad_fraction=0.05"],
        files={"bad.jsonl": _rows_text(_good()) + BAD_JSON + "\n"},
        expect="quarantine",
        check=_quarantined("bad.jsonl:41", "run/quarantine-train.jsonl"),
    )
    t(
        "t-data-no-fields",
        "rows with neither messages nor text",
        ["data.train=qa.jsonl"],
        files={"qa.jsonl": _rows_text({"question": "q", "answer": "a"} for _ in range(10))},
        names=("qa.jsonl",),
    )
    t(
        "t-data-format-mismatch",
        "data.format alpaca for messages rows",
        ["data.format=alpaca"],
        names=("chat.jsonl", "alpaca", "instruction"),
    )
    t(
        "t-data-csv",
        "data.train a CSV file",
        ["data.train=table.csv"],
        files={"table.csv": "a,b\n1,2\n"},
        names=("table.csv",),
    )
    t(
        "t-data-latin1",
        "data.train not UTF-8",
        ["data.train=latin.jsonl"],
        files={"latin.jsonl": ('{"text": "caf\xe9"}\n' * 5).encode("latin-1")},
        names=("latin.jsonl",),
    )
    t(
        "t-data-json-array",
        "a .jsonl file holding one JSON array of rows",
        ["data.train=arr.jsonl"],
        files={"arr.jsonl": json.dumps(_good(5))},
        names=("arr.jsonl",),
    )
