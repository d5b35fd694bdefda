"""Class 2, bad inputs: `strop eval`, and the published layouts it must load."""

from __future__ import annotations

from .inputs_common import (
    Case,
    _rows_text,
    _scored,
    _y,
)


def eval_adder(C: list[Case]):
    """``e(id, what, overrides, files, tasks, top, **kw)``: a `strop eval e.yaml` case."""

    def e(id, what, overrides=(), files=None, tasks=None, top=None, **kw):
        tree = {
            "models": {"tiny": "tiny-llama"},
            "output_dir": "eout",
            "tasks": tasks
            if tasks is not None
            else [{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl"}],
        }
        tree.update(top or {})
        f = {"e.yaml": _y(tree), **(files or {})}
        C.append(Case(id, "eval", what, ["eval", "e.yaml", *overrides], f, **kw))

    return e


def eval_cases(C: list[Case]) -> None:
    """Mistakes in an eval config."""
    e = eval_adder(C)
    e(
        "e-key-top",
        "top-level 'model' instead of 'models'",
        top={"model": "tiny-llama"},
        names=("model",),
    )
    e(
        "e-type",
        "task type misspelt",
        tasks=[{"name": "mc", "type": "multiplechoice", "data": "mc.jsonl"}],
        names=("multiplechoice", "type"),
    )
    e(
        "e-other-type-key",
        "shots on a generation task",
        tasks=[{"name": "g", "type": "generation", "data": "gen.jsonl", "shots": 3}],
        names=("shots",),
    )
    e(
        "e-other-type-key2",
        "labels on a multiple_choice task",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl", "labels": ["a"]}],
        names=("labels",),
    )
    e(
        "e-other-type-key3",
        "n_samples on a perplexity task",
        tasks=[{"name": "ppl", "type": "perplexity", "data": "chat.jsonl", "n_samples": 4}],
        names=("n_samples",),
    )
    e(
        "e-data-missing",
        "task data missing",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "gone.jsonl"}],
        names=("gone.jsonl",),
    )
    e(
        "e-mc-bad-header",
        "MC CSV with an unknown header",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "bad.csv"}],
        files={"bad.csv": "Q,Opt1,Opt2,Opt3,Opt4,Key\nwhat?,a,b,c,d,A\n"},
        names=("bad.csv",),
    )
    e(
        "e-mc-answer-range",
        "MC answer 'E' for four choices",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mcE.jsonl"}],
        files={
            "mcE.jsonl": _rows_text(
                [{"question": "q?", "choices": ["a", "b", "c", "d"], "answer": "E"}]
            )
        },
        names=("mcE.jsonl",),
    )
    e(
        "e-mc-no-choices",
        "MC rows without choices",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mcn.jsonl"}],
        files={"mcn.jsonl": _rows_text([{"question": "q?", "answer": "A"}])},
        names=("mcn.jsonl",),
    )
    e(
        "e-mc-empty-csv",
        "MC CSV empty",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "empty.csv"}],
        files={"empty.csv": ""},
        names=("empty.csv",),
    )
    e(
        "e-metric",
        "generation metric misspelt",
        tasks=[{"name": "g", "type": "generation", "data": "gen.jsonl", "metrics": ["rouge2"]}],
        names=("rouge2", "metrics"),
    )
    e(
        "e-passk",
        "pass_at_k above n_samples",
        tasks=[
            {
                "name": "g",
                "type": "generation",
                "data": "gen.jsonl",
                "n_samples": 2,
                "temperature": 0.8,
                "pass_at_k": [4],
            }
        ],
        names=("pass_at_k",),
    )
    e(
        "e-model-unknown",
        "unknown model name",
        top={"models": {"m": "tiny-lama"}},
        names=("tiny-lama",),
    )
    e(
        "e-model-gguf",
        "a .gguf path that does not exist",
        top={"models": {"m": "./nope.gguf"}},
        names=("nope.gguf",),
    )
    e(
        "e-baseline",
        "baseline not among the models",
        top={"baseline": "base"},
        names=("baseline", "base"),
    )
    e(
        "e-adapter-missing",
        "adapter dir missing",
        top={"models": {"m": {"model": "tiny-llama", "adapter": "gone-adapter"}}},
        names=("gone-adapter",),
    )
    e(
        "e-limit",
        "limit 0",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl", "limit": 0}],
        names=("limit",),
    )
    e(
        "e-temp",
        "temperature negative",
        tasks=[{"name": "g", "type": "generation", "data": "gen.jsonl", "temperature": -1}],
        names=("temperature",),
    )
    e("e-out-file", "output_dir a file", top={"output_dir": "afile"}, names=("output_dir", "afile"))
    e("e-tasks-empty", "tasks empty", tasks=[], names=("tasks",))
    e("e-override", "override key misspelt", ["seeed=1"], names=("seeed",))
    e(
        "e-dup-task",
        "two tasks with the same name",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl"}] * 2,
        names=("mc",),
    )
    e(
        "e-gen-bad-rows",
        "generation data with rows lacking messages",
        tasks=[{"name": "g", "type": "generation", "data": "qa.jsonl"}],
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(5))},
        names=("qa.jsonl",),
    )
    C.append(
        Case(
            "e-cfg-dir",
            "eval",
            "config path a directory",
            ["eval", "emptydir"],
            names=("emptydir",),
        )
    )


def eval_layouts(C: list[Case]) -> None:
    """Published layouts: must load (valid inputs, counted apart)."""
    e = eval_adder(C)
    e(
        "a-cmmlu",
        "CMMLU CSV as published (',Question,A,B,C,D,Answer')",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "test/tea.csv"}],
        files={
            "test/tea.csv": ",Question,A,B,C,D,Answer\n0,哪种茶叶通常不经过发酵？,红茶,绿茶,乌龙茶,普洱熟茶,B\n"
            '1,"下列哪一项,是泡茶时常用的器具？",盖碗,铁锅,砚台,算盘,A\n'
        },
        expect="accept",
        check=_scored("mc"),
    )
    e(
        "a-mmlu",
        "MMLU CSV as published (no header)",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "astro_test.csv"}],
        files={
            "astro_test.csv": "What orbits the Earth?,The Moon,Mars,The Sun,Venus,A\n"
            "How many planets?,7,8,9,10,B\n"
        },
        expect="accept",
        check=_scored("mc"),
    )
    e(
        "a-ceval",
        "C-Eval CSV as published (id, ..., answer, explanation)",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "river_val.csv"}],
        files={
            "river_val.csv": "id,question,A,B,C,D,answer,explanation\n0,河流的发源地叫什么？,河口,源头,三角洲,支流,B,源头\n"
        },
        expect="accept",
        check=_scored("mc"),
    )
    e(
        "a-hf-index",
        "HF JSONL with choices and an integer answer",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "hf.jsonl"}],
        files={
            "hf.jsonl": _rows_text(
                [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1}]
            )
        },
        expect="accept",
        check=_scored("mc"),
    )
