"""Class 2, bad inputs: `strop merge` and `strop generate`."""

from __future__ import annotations

from pathlib import Path

from .inputs_common import (
    BAD_JSON,
    Case,
    _rows_text,
    _y,
)


def merge_cases(C: list[Case], models: Path) -> None:
    """`strop merge` (``models``: the inputs build_merge_models wrote)."""
    m1, m2 = str(models / "m1"), str(models / "m2")

    def m(id, what, tree=None, overrides=(), files=None, **kw):
        base = {"method": "linear", "models": [m1, m2], "output": {"dir": "mout"}}
        f = {"mg.yaml": _y({**base, **(tree or {})}), **(files or {})}
        C.append(Case(id, "merge", what, ["merge", "mg.yaml", *overrides], f, **kw))

    m(
        "m-truncated",
        "an input whose safetensors file is truncated",
        {"models": [m1, str(models / "truncated")]},
        names=("truncated",),
    )
    m(
        "m-garbage",
        "an input whose safetensors header is garbage",
        {"models": [m1, str(models / "garbage")]},
        names=("garbage",),
    )
    m(
        "m-missing",
        "an input that does not exist",
        {"models": [m1, "gone-model"]},
        names=("gone-model",),
    )
    m(
        "m-shapes",
        "inputs with mismatched shapes",
        {"models": [m1, str(models / "wide")]},
        names=("shape",),
    )
    m(
        "m-emptydir",
        "an input dir without weights",
        {"models": [m1, "emptydir"]},
        names=("emptydir",),
    )
    m(
        "m-pickle-only",
        "an input with only pytorch_model.bin (a pickle)",
        {"models": [m1, str(models / "pickled")]},
        names=("pickled", "pytorch_model.bin"),
        check=lambda d, p: ["the planted pickle ran"] if (models / "PWNED").exists() else [],
    )
    m("m-method", "method misspelt", {"method": "mean"}, names=("mean",))
    m(
        "m-slerp3",
        "slerp with three models",
        {"method": "slerp", "models": [m1, m2, m1]},
        names=("slerp",),
    )
    m("m-ties-base", "ties without a base", {"method": "ties"}, names=("base",))
    m("m-param-other", "params.t on linear", {"params": {"t": 0.3}}, names=("params.t",))
    m(
        "m-density",
        "density 1.5 on ties",
        {"method": "ties", "base": m1, "models": [{"model": m2, "density": 1.5}]},
        names=("density",),
    )
    m("m-weight-nan", "weight .nan", overrides=["models.0.weight=.nan"], names=("weight",))
    m("m-weight-type", "weight not a number", overrides=["models.0.weight=abc"], names=("weight",))
    m(
        "m-out-file",
        "output.dir a file",
        {"output": {"dir": "afile"}},
        names=("output.dir", "afile"),
    )
    m(
        "m-out-under-file",
        "output.dir under a file",
        {"output": {"dir": "afile/sub"}},
        names=("output.dir", "afile"),
    )
    m("m-out-key", "output key misspelt", {"output": {"dri": "x"}}, names=("output.dri",))
    m("m-models-empty", "models empty", {"models": []}, names=("models",))
    m(
        "m-index",
        "override into a models index that does not exist",
        overrides=["models.5.weight=1"],
        names=("models.5",),
    )
    m(
        "m-exists",
        "output dir exists (no overwrite)",
        files={"mout/keep.txt": "mine"},
        names=("output.overwrite", "mout"),
    )


def generate_cases(C: list[Case]) -> None:
    """`strop generate`."""

    def gen(id, what, opts, files=None, **kw):
        base = {"-i": "gen.jsonl", "-o": "gout.jsonl", "-m": "tiny-llama", "--max-new-tokens": "4"}
        base.update(opts)
        argv = ["generate"] + [x for k, v in base.items() if v is not None for x in (k, v)]
        C.append(Case(id, "generate", what, argv, dict(files or {}), **kw))

    gen("g-in-missing", "input missing", {"-i": "gone.jsonl"}, names=("gone.jsonl",))
    gen("g-in-dir", "input a directory", {"-i": "emptydir"}, names=("emptydir",))
    gen(
        "g-in-empty",
        "input empty",
        {"-i": "empty.jsonl"},
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    gen(
        "g-in-fields",
        "input rows without messages or prompt",
        {"-i": "qa.jsonl"},
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(3))},
        names=("qa.jsonl",),
    )
    gen(
        "g-in-badjson",
        "input with a bad JSON line",
        {"-i": "bad.jsonl"},
        files={"bad.jsonl": _rows_text([{"prompt": "hi"}]) + BAD_JSON + "\n"},
        names=("bad.jsonl",),
    )
    gen(
        "g-in-prompt-number",
        "input prompt a number",
        {"-i": "n.jsonl"},
        files={"n.jsonl": _rows_text([{"prompt": 5}])},
        names=("n.jsonl", "prompt"),
    )
    gen("g-model-unknown", "unknown model name", {"-m": "tiny-lama"}, names=("tiny-lama",))
    gen(
        "g-model-gguf",
        "a .gguf path that does not exist",
        {"-m": "./nope.gguf"},
        names=("nope.gguf",),
    )
    gen(
        "g-model-emptydir",
        "model a directory without a model",
        {"-m": "./emptydir"},
        names=("emptydir",),
    )
    gen("g-adapter-missing", "adapter dir missing", {"-a": "gone-adapter"}, names=("gone-adapter",))
    gen(
        "g-adapter-empty", "adapter dir without an adapter", {"-a": "emptydir"}, names=("emptydir",)
    )
    gen("g-out-dir", "output a directory", {"-o": "emptydir"}, names=("emptydir",))
    gen("g-out-under-file", "output under a file", {"-o": "afile/out.jsonl"}, names=("afile",))
    gen(
        "g-maxnew",
        "max-new-tokens 0",
        {"--max-new-tokens": "0"},
        names=("max-new-tokens", "max_new_tokens"),
    )
    gen("g-temp", "temperature negative", {"--temperature": "-1"}, names=("temperature",))
    gen("g-topp0", "top-p 0", {"--top-p": "0"}, names=("top-p", "top_p"))
    gen("g-topp-big", "top-p 1.5", {"--top-p": "1.5"}, names=("top-p", "top_p"))
    gen("g-batch", "batch-size 0", {"--batch-size": "0"}, names=("batch-size", "batch_size"))
    gen("g-temp-nan", "temperature nan", {"--temperature": "nan"}, names=("temperature",))
