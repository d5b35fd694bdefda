"""The `strop merge` config. Strict like the train config: an unknown key is an error that
names it and suggests the closest valid one; a parameter the chosen method ignores is an
error too (it would otherwise look like it did something)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from strop.config.load import apply_override, read_yaml_tree, validate_tree
from strop.config.schema import Section
from strop.errors import StropError
from strop.eval.config import TaskSpec
from strop.merge.methods import MERGE_METHODS


class Rule(Section):
    pattern: str = "*"
    """Shell-style pattern on tensor names (fnmatch), e.g. ``*.mlp.*``; default everything."""
    value: float | list[float]
    """A number, or a gradient over layers (first layer .. last layer, linearly interpolated)."""


Value = float | list[float] | list[Rule]
"""A per-tensor number: constant, a gradient over layers, or rules (first match wins)."""


class InputSpec(Section):
    model: str
    """Known model name, HF dir, strop run dir (its final-merged/ or final/), LoRA adapter dir
    (folded into its base first) or, for checkpoint_average, a run dir with checkpoints/."""
    name: str | None = None
    """Label used in messages, the manifest and ``tokenizer_from``; default from the path."""
    weight: Value = 1.0
    density: Value = 1.0
    """ties: share of task-vector entries kept by magnitude; dare: keep probability."""


class ParamsSection(Section):
    normalize: bool = True
    """linear: divide by the sum of the weights."""
    scale: float = 1.0
    """ties, dare_ties: λ in θ = θ_base + λ·τ_merged."""
    t: Value = 0.5
    """slerp: 0 = first model, 1 = second."""
    dot_threshold: float = Field(0.9995, gt=0, le=1)
    """slerp: |cos Ω| above this counts as colinear and interpolates linearly."""
    seed: int = 0
    """dare: seeds the random drop masks."""
    last: int = Field(2, ge=1)
    """checkpoint_average: how many of the newest committed checkpoints to average."""


class OutputSection(Section):
    dir: str = "runs/merged"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: each tensor keeps the dtype it has in the first input."""
    shard_size: int = Field(2_000_000_000, ge=1024)
    """Bytes per safetensors shard."""
    tokenizer_from: str | None = None
    """Input whose tokenizer and chat template the output gets: an input's name or "base".
    Needed when the inputs' chat templates differ; default the base, else the first input."""
    overwrite: bool = False


class SearchSection(Section):
    strategy: Literal["grid", "random"] = "grid"
    space: dict[str, list[float]]
    """Dotted config key -> values (grid) or [low, high] (random), e.g.
    ``models.0.weight: [0.2, 0.5, 0.8]``."""
    trials: int = Field(8, ge=1)
    """random: how many candidates."""
    seed: int = 0
    tasks: list[TaskSpec] = Field(default_factory=list)
    """strop eval tasks (as in an eval config) every candidate is scored on."""
    eval_config: str | None = None
    """Or: take the tasks (and seed) from this eval config."""
    objective: list[str]
    """``task/metric`` names; the candidate score is their mean."""
    mode: Literal["max", "min"] = "max"
    keep_candidates: bool = False

    @field_validator("objective", mode="before")
    @classmethod
    def _one_to_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> SearchSection:
        if not self.space:
            raise ValueError("search.space: name at least one key to search")
        if bool(self.tasks) == bool(self.eval_config):
            raise ValueError("search: give either tasks or eval_config")
        for key, values in self.space.items():
            if not values:
                raise ValueError(f"search.space.{key}: no values")
            if self.strategy == "random" and len(values) != 2:
                raise ValueError(f"search.space.{key}: random search takes [low, high]")
        for item in self.objective:
            if "/" not in item:
                raise ValueError(f"search.objective: {item!r} is not task/metric")
        return self


class MergeConfig(Section):
    method: str
    models: list[InputSpec]
    base: str | None = None
    """The model the inputs were fine-tuned from (task_arithmetic, ties, dare_*)."""
    params: ParamsSection = Field(default_factory=ParamsSection)
    output: OutputSection = Field(default_factory=OutputSection)
    search: SearchSection | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _names_to_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> MergeConfig:
        if self.method not in MERGE_METHODS:
            raise ValueError(
                f"method: unknown method {self.method!r}; one of {', '.join(MERGE_METHODS)}"
            )
        m = MERGE_METHODS[self.method]
        if not self.models:
            raise ValueError("models: name at least one input")
        if m.n_models is not None and len(self.models) != m.n_models:
            raise ValueError(
                f"models: {self.method} takes exactly {m.n_models} models (got {len(self.models)})"
            )
        if self.method == "checkpoint_average" and len(self.models) != 1:
            raise ValueError("models: checkpoint_average takes one run dir")
        if m.needs_base and self.base is None:
            raise ValueError(f"base: {self.method} needs the base model the inputs were tuned from")
        if not m.needs_base and self.base is not None:
            raise ValueError(f"base: {self.method} does not use a base model; remove the key")
        for key in self.params.model_fields_set - m.uses:
            raise ValueError(f"params.{key}: not used by method {self.method}; remove the key")
        for i, spec in enumerate(self.models):
            for key in {"weight", "density"} & spec.model_fields_set - m.uses:
                raise ValueError(f"models.{i}.{key}: not used by method {self.method}")
        for i, spec in enumerate(self.models):
            if spec.name is None:
                spec.name = _default_name(spec.model, i)
        names = [s.name for s in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models: duplicate name(s) {', '.join(dup)}; set models.N.name")
        return self


def _default_name(model: str, index: int) -> str:
    p = Path(model)
    parts = [x for x in p.parts if x not in ("final", "final-merged", "/")]
    return parts[-1] if parts else f"model{index}"


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set ``a.0.b`` in a tree of dicts and lists (list items by index), for search and
    overrides that reach into ``models``."""
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise StropError(f"{key}: {'.'.join(parts[: i + 1])} is not a list index")
            item = node[int(part)]
            if isinstance(item, str):  # models: [a, b] shorthand
                item = node[int(part)] = {"model": item}
            node = item
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise StropError(f"{key}: {'.'.join(parts[: i + 1])} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise StropError(f"{key}: {last!r} is not a list index")
        node[int(last)] = value
    else:
        node[last] = value


def apply_merge_override(tree: dict, override: str) -> None:
    if "=" not in override:
        apply_override(tree, override)  # raises the usual "expected key.path=value"
    key, raw = override.split("=", 1)
    probe: dict = {}
    apply_override(probe, f"v={raw}")  # parse the value exactly as other verbs do
    set_dotted(tree, key.strip(), probe["v"])


def validate_merge_tree(tree: dict, source: str) -> MergeConfig:
    return validate_tree(MergeConfig, tree, source)


def load_merge_config(
    path: str | Path | None, overrides: list[str] = (), raw: dict | None = None
) -> tuple[MergeConfig, dict, str]:
    """Read YAML (or take ``raw``), apply overrides, validate. Returns the config, the raw
    tree (search re-validates edited copies of it) and the name errors cite."""
    tree, source = read_yaml_tree(path, raw)
    for ov in overrides:
        apply_merge_override(tree, ov)
    return validate_merge_tree(tree, source), tree, source
