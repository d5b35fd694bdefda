"""The `strop eval` config: models to compare, tasks to run, where to write. Strict, like the
training config: an unknown key is an error that names it and suggests the closest valid one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, TypeAdapter, field_validator, model_validator

from strop.config.load import apply_override, read_yaml_tree, validate_tree
from strop.config.schema import Section
from strop.errors import StropError

GENERATION_METRICS = ("exact_match", "token_f1", "json_fields", "rouge", "bleu", "chrf")
GenerationMetric = Literal["exact_match", "token_f1", "json_fields", "rouge", "bleu", "chrf"]
RecordFormat = Literal["auto", "alpaca", "sharegpt", "messages", "text", "preference"]


class ModelSpec(Section):
    model: str
    """Known model name, local HF dir, or .gguf file."""
    adapter: str | None = None
    """A PEFT adapter dir (e.g. a run's final/) applied on top of ``model``."""
    dtype: str = "auto"


class TaskBase(Section):
    """The keys every task has. ``type`` picks the task's class (``TaskSpec``), which holds
    only the keys that type reads; a key of another type is refused naming the types it
    belongs to, any other unknown key with the closest valid one."""

    name: str
    type: str
    data: str | list[str]
    limit: int | None = Field(None, ge=1)
    """Use only the first N examples."""
    general: bool = False
    """A general-ability task: reported in the "what was lost" section (forgetting)."""

    path_keys: ClassVar[dict[str, str]] = {}
    """Keys naming a ``file`` or a ``dir`` that must exist (checked after validation)."""

    @property
    def model_kind(self) -> str:
        """How each evaluated model is loaded for this task: ``lm`` (causal LM), ``reward``
        (a stage-rm output) or ``none`` (the task does not use it)."""
        return "lm"

    @model_validator(mode="before")
    @classmethod
    def _refuse_keys_of_other_types(cls, data: Any) -> Any:
        """A key some other type reads (``shots`` on a perplexity task) is most likely on the
        wrong task or has the wrong type: say which types take it, not "did you mean"."""
        if not isinstance(data, dict):
            return data
        for key in data:
            owners = [t for t, c in TASK_SPECS.items() if key in c.model_fields]
            if key not in cls.model_fields and owners:
                raise ValueError(
                    f"task {data.get('name')!r}: unknown key {key!r} ({' / '.join(owners)} "
                    "tasks only)"
                )
        return data

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> TaskBase:
        """On ``TaskBase`` itself: any task, validated as the class its ``type`` names."""
        if cls is TaskBase:
            return _ANY_TASK.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)


# Mixins of keys several types share. A task class lists them before TaskBase so that name and
# type come first in the dumped config.
class _Format(Section):
    format: RecordFormat = "auto"
    """The row format of ``data`` (any format `strop train` reads)."""


class _Batch(Section):
    batch_size: int = Field(8, ge=1)


class _Length(Section):
    max_length: int = Field(1024, ge=8)
    """Tokens per scored sequence; longer ones are cut."""


class Decoding(_Batch):
    """The keys of tasks that generate answers (strop.infer; greedy at temperature 0)."""

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)


class GenerationTask(Decoding, _Format, TaskBase):
    type: Literal["generation"]
    metrics: list[GenerationMetric] = Field(default_factory=lambda: ["exact_match", "token_f1"])
    n_samples: int = Field(1, ge=1)
    """Completions sampled per prompt (> 1 needs temperature > 0)."""
    pass_at_k: list[int] | None = None
    """Report pass@k for these k (each <= n_samples)."""
    pass_check: Literal["exact_match", "json_valid", "regex"] = "exact_match"
    """When a sample counts as correct for pass@k."""
    pass_pattern: str | None = None
    """The regular expression for ``pass_check: regex`` (re.search)."""
    bleu_tokenize: Literal["13a", "intl", "zh", "char", "none"] = "13a"
    """sacrebleu's BLEU tokenizer (zh for Chinese references)."""

    @model_validator(mode="after")
    def _check(self) -> GenerationTask:
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
        return self


class PerplexityTask(_Length, _Format, TaskBase):
    type: Literal["perplexity"]
    kind: Literal["chat", "text"] = "chat"
    """chat (loss on the turns chosen by ``mask``) or text (loss on every token)."""
    mask: Literal["assistant", "last", "all"] = "assistant"


class MultipleChoiceTask(_Length, _Batch, TaskBase):
    type: Literal["multiple_choice"]
    dev: str | None = None
    """File of k-shot examples (taken per subject when rows have one)."""
    shots: int = Field(0, ge=0)
    score: Literal["letter", "text"] = "letter"
    """Score the continuation " A" (letter) or " <choice text>" (text)."""
    chat_template: bool = False
    """Wrap the prompt in the model's chat template."""

    path_keys: ClassVar[dict[str, str]] = {"dev": "file"}

    @model_validator(mode="after")
    def _check(self) -> MultipleChoiceTask:
        if self.shots and not self.dev:
            raise ValueError(f"task {self.name!r}: shots: {self.shots} needs a dev file")
        return self


class PreferenceTask(_Length, _Batch, _Format, TaskBase):
    type: Literal["preference"]


class ClassificationTask(_Length, Decoding, TaskBase):
    type: Literal["classification"]
    labels: list[str] = Field(default_factory=list)
    """The fixed label set (required, at least two)."""
    predict: Literal["loglik", "generation"] = "loglik"
    """Argmax label log-likelihood, or the first label in a generated answer."""
    prompt: str = "{text}\nLabel:"
    """The prompt, ``{text}`` replaced by the example's text."""
    chat_template: bool = False
    """loglik: wrap the prompt in the model's chat template (generation always does)."""

    @model_validator(mode="after")
    def _check(self) -> ClassificationTask:
        where, labels = f"task {self.name!r}", self.labels
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
        return self


class RewardTask(Decoding, _Format, TaskBase):
    type: Literal["reward"]
    reward_model: str | None = None
    """A stage-rm output dir scoring every model's answers (the decoding keys shape them);
    without it, every evaluated model must itself be a stage-rm output, scored on the pairs."""

    path_keys: ClassVar[dict[str, str]] = {"reward_model": "dir"}

    @property
    def model_kind(self) -> str:
        return "reward" if self.reward_model is None else "lm"


class JudgeTask(_Length, Decoding, _Format, TaskBase):
    type: Literal["judge"]
    judge: str | None = None
    """The judge model (a known name, HF dir or .gguf), required."""
    judge_adapter: str | None = None
    """A PEFT adapter dir applied to the judge."""
    chat_template: bool = False
    """Wrap the judge's prompt in the judge's chat template."""

    path_keys: ClassVar[dict[str, str]] = {"judge_adapter": "dir"}

    @model_validator(mode="after")
    def _check(self) -> JudgeTask:
        if not self.judge:
            raise ValueError(f"task {self.name!r}: judge: name the judge model")
        return self


class RetrievalTask(_Length, _Batch, TaskBase):
    type: Literal["retrieval"]
    corpus: str | None = None
    """JSONL of ``{id, text}`` documents the queries (``data``) are run against (required)."""
    embedder: Literal["model", "minilm"] = "model"
    """The evaluated model's mean-pooled hidden states, or the offline MiniLM."""
    recall_at: list[int] = Field(default_factory=lambda: [1, 5, 10])
    """The k of each reported recall@k."""

    path_keys: ClassVar[dict[str, str]] = {"corpus": "file"}

    @property
    def model_kind(self) -> str:
        return "none" if self.embedder == "minilm" else "lm"

    @model_validator(mode="after")
    def _check(self) -> RetrievalTask:
        where = f"task {self.name!r}"
        if not self.corpus:
            raise ValueError(f"{where}: corpus: name the JSONL file of {{id, text}} documents")
        if not self.recall_at or any(k < 1 for k in self.recall_at):
            raise ValueError(f"{where}: recall_at: give one or more k >= 1")
        if len(set(self.recall_at)) != len(self.recall_at):
            raise ValueError(f"{where}: recall_at: duplicate k in {self.recall_at}")
        return self


TaskSpec = Annotated[
    GenerationTask
    | PerplexityTask
    | MultipleChoiceTask
    | PreferenceTask
    | ClassificationTask
    | RewardTask
    | JudgeTask
    | RetrievalTask,
    Field(discriminator="type"),
]
"""One eval task: the class its ``type`` names."""

TASK_SPECS: dict[str, type[TaskBase]] = {
    get_args(cls.model_fields["type"].annotation)[0]: cls for cls in get_args(get_args(TaskSpec)[0])
}
"""Task type -> its spec class."""

_ANY_TASK: TypeAdapter = TypeAdapter(TaskSpec)


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
        for key, kind in task.path_keys.items():
            path = getattr(task, key)
            if path is None:
                continue
            if kind == "dir" and not Path(path).is_dir():
                raise StropError(f"{source}: tasks.{i}.{key}: not a directory: {path}")
            if kind == "file" and not Path(path).exists():
                raise StropError(f"{source}: tasks.{i}.{key}: file not found: {path}")
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
