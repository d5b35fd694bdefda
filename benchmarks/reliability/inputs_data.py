"""Class 2, bad inputs: `strop data inspect` and `strop prepare`."""

from __future__ import annotations

from .inputs_common import (
    ASSISTANT_FIRST,
    BAD_JSON,
    GPT_FIRST,
    SHAREGPT_GOOD,
    Case,
    _good,
    _msgs,
    _quarantined,
    _rows_text,
    _y,
    dup_cfg,
)


def inspect_cases(C: list[Case]) -> None:
    """`strop data inspect`."""

    def i(id, what, overrides=(), files=None, cfg=None, **kw):
        f = dict(files or {})
        if cfg is not None:
            f["c.yaml"] = cfg
        C.append(Case(id, "data inspect", what, ["data", "inspect", "c.yaml", *overrides], f, **kw))

    i(
        "i-data-missing",
        "data.train missing",
        ["data.train=missing.jsonl"],
        names=("missing.jsonl",),
    )
    i(
        "i-data-empty",
        "data.train empty",
        ["data.train=empty.jsonl"],
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    i("i-data-dir", "data.train a directory", ["data.train=emptydir"], names=("emptydir",))
    i(
        "i-bad-json",
        "every line bad JSON",
        ["data.train=bad.jsonl"],
        files={"bad.jsonl": (BAD_JSON + "\n") * 10},
        names=("bad.jsonl",),
    )
    i(
        "i-assistant-first",
        "one assistant-first row of 41 (default threshold)",
        ["data.train=af.jsonl"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        names=("af.jsonl:41",),
    )
    i(
        "i-gpt-first-q",
        "ShareGPT, one gpt-first row of 41, max_bad_fraction=0.05",
        ["data.train=sg.jsonl", "data.max_bad_fraction=0.05"],
        files={"sg.jsonl": _rows_text(SHAREGPT_GOOD + [GPT_FIRST])},
        expect="quarantine",
        check=lambda d, p: [] if "sg.jsonl:41" in p.out + p.err else ["sg.jsonl:41 not named"],
    )
    i("i-key", "typo in a key", ["data.max_len=64"], names=("data.max_len",))
    i("i-dup", "duplicate key in the YAML", cfg=dup_cfg(), names=("duplicate key",))
    C.append(
        Case(
            "i-cfg-dir",
            "data inspect",
            "config path a directory",
            ["data", "inspect", "emptydir"],
            names=("emptydir",),
        )
    )
    i("i-model-unknown", "unknown model name", ["model.name=tiny-lama"], names=("tiny-lama",))
    i(
        "i-no-assistant",
        "no assistant turn in any row",
        ["data.train=na.jsonl"],
        files={"na.jsonl": _rows_text(_msgs(("user", "anyone?")) for _ in range(10))},
        names=("na.jsonl",),
    )


def prepare_cases(C: list[Case]) -> None:
    """`strop prepare`."""

    def p(id, what, overrides=(), files=None, cfg=None, **kw):
        f = dict(files or {})
        if cfg is not None:
            f["prep.yaml"] = cfg
        C.append(Case(id, "prepare", what, ["prepare", "prep.yaml", *overrides], f, **kw))

    def prep(**kw):
        return _y({"inputs": ["in.jsonl"], "output": {"dir": "pout"}, "steps": ["normalise"], **kw})

    p("p-out-file", "output.dir a file", ["output.dir=afile"], names=("output.dir",))
    p(
        "p-out-under-file",
        "output.dir under a file",
        ["output.dir=afile/sub"],
        names=("output.dir",),
    )
    p("p-in-missing", "an input file missing", ["inputs=[gone.jsonl]"], names=("gone.jsonl",))
    p("p-in-dir", "an input that is a directory", ["inputs=[emptydir]"], names=("emptydir",))
    p(
        "p-in-empty",
        "an input that is empty",
        ["inputs=[empty.jsonl]"],
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    p("p-step-unknown", "unknown step name 'dedupe'", cfg=prep(steps=["dedupe"]), names=("dedupe",))
    p(
        "p-step-param",
        "a step parameter misspelt",
        cfg=prep(steps=[{"name": "filter", "min_char": 5}]),
        names=("min_char",),
    )
    p(
        "p-step-param-type",
        "a step parameter of the wrong type",
        cfg=prep(steps=[{"name": "filter", "min_chars": "five"}]),
        names=("min_chars",),
    )
    p("p-steps-string", "steps a string", cfg=prep(steps="normalise"), names=("steps",))
    p("p-workers", "num_workers -1", ["num_workers=-1"], names=("num_workers",))
    p("p-badfrac", "max_bad_fraction 2", ["max_bad_fraction=2"], names=("max_bad_fraction",))
    p(
        "p-badfrac-nan",
        "max_bad_fraction .nan",
        ["max_bad_fraction=.nan"],
        names=("max_bad_fraction",),
    )
    p(
        "p-all-bad",
        "every input row bad JSON",
        ["inputs=[bad.jsonl]"],
        files={"bad.jsonl": (BAD_JSON + "\n") * 10},
        names=("bad.jsonl", "malformed"),
    )
    p(
        "p-bad-q",
        "two bad JSON rows of 42, max_bad_fraction=0.1",
        ["inputs=[bad.jsonl]", "max_bad_fraction=0.1"],
        files={"bad.jsonl": _rows_text(_good()) + (BAD_JSON + "\n") * 2},
        expect="quarantine",
        check=_quarantined("bad.jsonl:41", "pout/quarantine.jsonl", printed=False),
    )
    p(
        "p-assistant-first-q",
        "one assistant-first row of 41, max_bad_fraction=0.05",
        ["inputs=[af.jsonl]", "max_bad_fraction=0.05"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        expect="quarantine",
        check=_quarantined("af.jsonl:41", "pout/quarantine.jsonl", printed=False),
    )
    p("p-split", "split.eval 1.5", ["split.eval=1.5"], names=("split.eval",))
    p(
        "p-decontam-missing",
        "decontaminate against a missing eval file",
        cfg=prep(steps=[{"name": "decontaminate", "eval_files": ["gone.jsonl"]}]),
        names=("gone.jsonl",),
    )
    p(
        "p-key-top",
        "top-level key misspelt ('input')",
        cfg=_y({"input": ["in.jsonl"], "output": {"dir": "pout"}}),
        names=("input",),
    )
    p(
        "p-override-type",
        "a step override of the wrong type",
        ["steps.normalise.nfkc=perhaps"],
        names=("nfkc", "steps"),
    )
    p(
        "p-dup",
        "duplicate key in the YAML",
        cfg=prep() + "output:\n  dir: other\n",
        names=("duplicate key",),
    )
    C.append(
        Case(
            "p-cfg-missing",
            "prepare",
            "config file missing",
            ["prepare", "nope.yaml"],
            names=("nope.yaml",),
        )
    )
    p("p-cfg-syntax", "config YAML syntax error", cfg="inputs: [in.jsonl\n", names=("prep.yaml",))
