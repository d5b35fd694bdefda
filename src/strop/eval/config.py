"""The `strop eval` config: models to compare, tasks to run, where to write. Strict, like the
training config: an unknown key is an error that names it and suggests the closest valid one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from strop.config.load import apply_override, read_yaml_tree, validate_tree
from strop.config.schema import Section
from strop.errors import StropError

GENERATION_METRICS = ("exact_match", "token_f1", "json_fields", "rouge", "bleu", "chrf")
GenerationMetric = Literal["exact_match", "token_f1", "json_fields", "rouge", "bleu", "chrf"]

# Keys that belong to some task types only: setting one on another type is an error naming it.
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "dev": ("multiple_choice",),
    "shots": ("multiple_choice",),
    "score": ("multiple_choice",),
    "chat_template": ("multiple_choice", "classification", "judge"),
    "judge": ("judge",),
    "judge_adapter": ("judge",),
    "labels": ("classification",),
    "predict": ("classification",),
    "prompt": ("classification",),
    "n_samples": ("generation",),
    "pass_at_k": ("generation",),
    "pass_check": ("generation",),
    "pass_pattern": ("generation",),
    "bleu_tokenize": ("generation",),
    "reward_model": ("reward",),
    "corpus": ("retrieval",),
    "embedder": ("retrieval",),
    "recall_at": ("retrieval",),
}


class ModelSpec(Section):
    model: str
    """Known model name, local HF dir, or .gguf file."""
    adapter: str | None = None
    """A PEFT adapter dir (e.g. a run's final/) applied on top of ``model``."""
    dtype: str = "auto"


class TaskSpec(Section):
    name: str
    type: Literal[
        "generation",
        "perplexity",
        "multiple_choice",
        "preference",
        "classification",
        "reward",
        "judge",
        "retrieval",
    ]
    data: str | list[str]
    format: Literal["auto", "alpaca", "sharegpt", "messages", "text", "preference"] = "auto"
    kind: Literal["chat", "text"] = "chat"
    """perplexity: chat (loss on the turns chosen by ``mask``) or text (loss on every token)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first N examples."""
    general: bool = False
    """A general-ability task: reported in the "what was lost" section (forgetting)."""
    metrics: list[GenerationMetric] | None = None
    """generation only; default exact_match and token_f1."""
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    batch_size: int = Field(8, ge=1)
    mask: Literal["assistant", "last", "all"] = "assistant"
    max_length: int = Field(1024, ge=8)
    dev: str | None = None
    """multiple_choice: file of k-shot examples (taken per subject when rows have one)."""
    shots: int = Field(0, ge=0)
    score: Literal["letter", "text"] = "letter"
    """multiple_choice: score the continuation " A" (letter) or " <choice text>" (text)."""
    chat_template: bool = False
    """multiple_choice, classification: wrap the prompt in the model's chat template."""
    labels: list[str] | None = None
    """classification: the fixed label set (required)."""
    predict: Literal["loglik", "generation"] = "loglik"
    """classification: argmax label log-likelihood, or the first label in a generated answer."""
    prompt: str = "{text}\nLabel:"
    """classification: the prompt, ``{text}`` replaced by the example's text."""
    reward_model: str | None = None
    """reward: a stage-rm output dir scoring every model's answers; without it, every
    evaluated model must itself be a stage-rm output, scored on the pairs."""
    judge: str | None = None
    """judge: the judge model (a known name, HF dir or .gguf), required."""
    judge_adapter: str | None = None
    """judge: a PEFT adapter dir applied to the judge."""
    n_samples: int = Field(1, ge=1)
    """generation: completions sampled per prompt (> 1 needs temperature > 0)."""
    pass_at_k: list[int] | None = None
    """generation: report pass@k for these k (each <= n_samples)."""
    pass_check: Literal["exact_match", "json_valid", "regex"] = "exact_match"
    """generation: when a sample counts as correct for pass@k."""
    pass_pattern: str | None = None
    """generation: the regular expression for ``pass_check: regex`` (re.search)."""
    bleu_tokenize: Literal["13a", "intl", "zh", "char", "none"] = "13a"
    """generation: sacrebleu's BLEU tokenizer (zh for Chinese references)."""
    corpus: str | None = None
    """retrieval: JSONL of ``{id, text}`` documents the queries (``data``) are run against."""
    embedder: Literal["model", "minilm"] = "model"
    """retrieval: the evaluated model's mean-pooled hidden states, or the offline MiniLM."""
    recall_at: list[int] = Field(default_factory=lambda: [1, 5, 10])
    """retrieval: the k of each reported recall@k."""

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        for key in sorted(self.model_fields_set):
            types = TYPE_KEYS.get(key)
            if types and self.type not in types:
                raise ValueError(f"task {self.name!r}: {key}: {' / '.join(types)} tasks only")
        if self.type == "generation":
            self._check_generation()
        if self.type == "classification":
            self._check_classification()
        if self.type == "multiple_choice":
            if self.metrics is not None:
                raise ValueError(
                    f"task {self.name!r}: metrics: multiple_choice tasks always report accuracy, "
                    "accuracy_norm and accuracy_macro; remove the key"
                )
            if self.shots and not self.dev:
                raise ValueError(f"task {self.name!r}: shots: {self.shots} needs a dev file")
        if self.type == "retrieval":
            self._check_retrieval()
        if self.type == "judge" and not self.judge:
            raise ValueError(f"task {self.name!r}: judge: name the judge model")
        fixed = ("perplexity", "preference", "classification", "reward", "judge", "retrieval")
        if self.type in fixed and self.metrics is not None:
            raise ValueError(
                f"task {self.name!r}: metrics: {self.type} tasks always report a fixed set "
                "(perplexity: loss, ppl, bits_per_byte; preference: accuracy, margin, "
                "margin_per_token; classification: accuracy, macro_f1, micro_f1, auc; retrieval: "
                "recall@k, mrr; reward: see docs/eval.md); remove the key"
            )
        if self.type == "generation" and self.kind == "text":
            raise ValueError(f"task {self.name!r}: kind: generation needs chat data")
        if self.type == "generation" and self.metrics is None:
            self.metrics = ["exact_match", "token_f1"]
        return self

    def _check_retrieval(self) -> None:
        where = f"task {self.name!r}"
        if not self.corpus:
            raise ValueError(f"{where}: corpus: name the JSONL file of {{id, text}} documents")
        if not self.recall_at or any(k < 1 for k in self.recall_at):
            raise ValueError(f"{where}: recall_at: give one or more k >= 1")
        if len(set(self.recall_at)) != len(self.recall_at):
            raise ValueError(f"{where}: recall_at: duplicate k in {self.recall_at}")
        for key in sorted({"kind", "format"} & self.model_fields_set):
            raise ValueError(f"{where}: {key}: retrieval reads its own JSONL format")

    def _check_classification(self) -> None:
        where = f"task {self.name!r}"
        labels = self.labels or []
        if len(labels) < 2:
            raise ValueError(f"{where}: labels: name at least two labels")
        if any(not lab.strip() for lab in labels) or len(set(labels)) != len(labels):
            raise ValueError(f"{where}: labels: labels must be non-empty and distinct")
        try:
            self.prompt.format(text="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"{where}: prompt: only {{text}} may appear in braces (write {{{{ and }}}} for "
                f"literal braces): {exc!r}"
            ) from None
        if "{text}" not in self.prompt:
            raise ValueError(f"{where}: prompt: must contain {{text}}")

    def _check_generation(self) -> None:
        where = f"task {self.name!r}"
        if self.n_samples > 1 and self.temperature == 0:
            raise ValueError(
                f"{where}: n_samples: {self.n_samples} samples need temperature > 0 (greedy "
                "decoding gives the same answer every time)"
            )
        for k in self.pass_at_k or []:
            if not 1 <= k <= self.n_samples:
                raise ValueError(
                    f"{where}: pass_at_k: k={k} needs 1 <= k <= n_samples ({self.n_samples})"
                )
        if self.pass_check == "regex":
            if not self.pass_pattern:
                raise ValueError(f"{where}: pass_pattern: pass_check regex needs a pattern")
            try:
                re.compile(self.pass_pattern)
            except re.error as exc:
                raise ValueError(f"{where}: pass_pattern: not a valid regex ({exc})") from None
        elif self.pass_pattern is not None:
            raise ValueError(f"{where}: pass_pattern: only used with pass_check: regex")

    def generation_params(self, seed: int):
        """strop.infer.GenerationParams from this task's decoding keys."""
        from strop.infer import GenerationParams

        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=list(self.stop),
            batch_size=self.batch_size,
            seed=seed,
        )


class EvalConfig(Section):
    models: dict[str, ModelSpec]
    baseline: str | None = None
    """The column deltas are taken against; default the first model."""
    output_dir: str = "runs/eval"
    seed: int = 0
    """Seeds sampling (temperature > 0) and the bootstrap."""
    bootstrap: int = Field(1000, ge=10)
    """Paired bootstrap resamples for the 95% CIs of deltas."""
    tasks: list[TaskSpec]
    forgetting: list[str] | None = None
    """Task names measuring general ability (same as ``general: true`` on each task)."""

    @field_validator("models", mode="before")
    @classmethod
    def _names_to_specs(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"model": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if not self.models:
            raise ValueError("models: name at least one model")
        if not self.tasks:
            raise ValueError("tasks: name at least one task")
        if self.baseline is None:
            self.baseline = next(iter(self.models))
        elif self.baseline not in self.models:
            raise ValueError(
                f"baseline: {self.baseline!r} is not one of the models ({', '.join(self.models)})"
            )
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tasks: duplicate task name(s) {', '.join(dup)}")
        judged = [t.name for t in self.tasks if t.type == "judge"]
        if judged and len(self.models) < 2:
            raise ValueError(
                f"tasks: judge task {judged[0]!r} compares models with the baseline; name at "
                "least two models"
            )
        unknown = [n for n in self.forgetting or [] if n not in names]
        if unknown:
            raise ValueError(
                f"forgetting: {', '.join(unknown)} is not a task name ({', '.join(names)})"
            )
        return self


def _check_paths(cfg: EvalConfig, source: str) -> None:
    for i, task in enumerate(cfg.tasks):
        for path in [task.data] if isinstance(task.data, str) else task.data:
            if not Path(path).exists():
                raise StropError(f"{source}: tasks.{i}.data: file not found: {path}")
        if task.corpus is not None and not Path(task.corpus).exists():
            raise StropError(f"{source}: tasks.{i}.corpus: file not found: {task.corpus}")
        if task.dev is not None and not Path(task.dev).exists():
            raise StropError(f"{source}: tasks.{i}.dev: file not found: {task.dev}")
        if task.judge_adapter is not None and not Path(task.judge_adapter).is_dir():
            raise StropError(
                f"{source}: tasks.{i}.judge_adapter: not a directory: {task.judge_adapter}"
            )
        if task.reward_model is not None and not Path(task.reward_model).is_dir():
            raise StropError(
                f"{source}: tasks.{i}.reward_model: not a directory: {task.reward_model}"
            )
    for name, spec in cfg.models.items():
        if spec.adapter is not None and not Path(spec.adapter).is_dir():
            raise StropError(f"{source}: models.{name}.adapter: not a directory: {spec.adapter}")


def load_eval_config(
    path: str | Path | None, overrides: list[str] = (), raw: dict | None = None
) -> EvalConfig:
    """Read YAML (or take ``raw``), apply dotted overrides, validate strictly."""
    tree, source = read_yaml_tree(path, raw)
    for ov in overrides:
        _apply_eval_override(tree, ov)
    cfg = validate_tree(EvalConfig, tree, source)
    _check_paths(cfg, source)
    return cfg


def _apply_eval_override(tree: dict, override: str) -> None:
    """Dotted overrides; ``tasks.<name or index>.key=value`` reaches into one task."""
    if "=" not in override:
        apply_override(tree, override)  # raises the usual "expected key.path=value"
    key = override.split("=", 1)[0].strip()
    parts = key.split(".")
    if parts[0] == "tasks" and len(parts) >= 3 and isinstance(tree.get("tasks"), list):
        tasks = tree["tasks"]
        sel = parts[1]
        idx = next(
            (i for i, t in enumerate(tasks) if isinstance(t, dict) and t.get("name") == sel), None
        )
        if idx is None and sel.isdigit() and int(sel) < len(tasks):
            idx = int(sel)
        if idx is None:
            raise StropError(f"override {override!r}: no task named {sel!r}")
        sub = {"t": tasks[idx]}
        apply_override(sub, "t." + ".".join(parts[2:]) + "=" + override.split("=", 1)[1])
        return
    apply_override(tree, override)
