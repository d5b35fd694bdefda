"""The `strop prepare` config: inputs, an ordered list of steps (each validated by its own
params class), outputs, split and scale settings. Strict like every strop config: an unknown
key is an error naming it (``steps.1.min_char``) and suggesting the closest valid one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator

from strop.config.load import (
    apply_override,
    closest,
    format_validation_error,
    read_yaml_tree,
    validate_tree,
)
from strop.config.schema import Section
from strop.data.prepare.steps import STEPS
from strop.errors import StropError


class InputSpec(Section):
    path: str
    format: Literal["auto", "alpaca", "sharegpt", "messages", "text", "preference", "kto"] = "auto"
    text_field: str = "text"


class OutputSection(Section):
    dir: str = "runs/prepared"
    name: str = "data"
    """Stem of the output files: data.jsonl, or data.train.jsonl + data.eval.jsonl."""
    parquet: bool = False
    """Also write .parquet beside each .jsonl."""


class SplitSection(Section):
    eval: float = Field(..., gt=0, lt=1)
    """Share of the cleaned records held out for evaluation."""
    stratify: str | None = None
    """A record field (e.g. source, language, category); every value gets the same eval share.
    ``layout`` stratifies by record layout."""
    seed: int = 0


class RaySection(Section):
    """``executor: ray``: where the per-record work runs (strop.data.prepare.ray_executor)."""

    address: str | None = None
    """None: start a local single-node Ray cluster for this run and shut it down afterwards;
    ``auto`` or ``ray://host:10001``: connect to a running cluster (left running)."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of the local cluster strop starts (None: Ray's default, every core)."""
    object_store_memory: int | None = Field(None, ge=78_643_200)
    """Bytes of the local cluster's object store (None: Ray's default, 30% of RAM)."""
    actors: int | None = Field(None, ge=1)
    """Worker actors running the steps; None: the cluster's CPUs // cpus_per_actor."""
    cpus_per_actor: float = Field(1.0, gt=0)
    in_flight: int = Field(2, ge=1)
    """Chunks queued per actor: memory in the object store is ~ actors x in_flight chunks."""
    runtime_env: dict[str, Any] | None = None
    """Passed to ray.init (e.g. pip / env_vars for a remote cluster's workers)."""


class PrepareConfig(Section):
    inputs: list[InputSpec]
    """Source files (any format strop reads); a path or a list of paths/specs."""
    steps: list[dict[str, Any]] = Field(default_factory=list)
    """Ordered steps: {name: <step>, ...its params}; a bare step name uses its defaults."""
    output: OutputSection = OutputSection()
    split: SplitSection | None = None
    num_workers: int = Field(1, ge=0)
    """Worker processes for the per-record work; 0 or 1 run in this process. The output is
    identical for any value."""
    chunk_size: int = Field(1000, ge=1)
    """Records per unit of work: memory is bounded by a few chunks per worker."""
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    """Fail (exit 2) when more than this share of rows is malformed (all are quarantined)."""
    executor: Literal["local", "ray"] = "local"
    """``local``: this process plus ``num_workers`` processes; ``ray``: Ray actors (section
    ``ray``). The output is identical either way."""
    ray: RaySection = RaySection()

    @field_validator("inputs", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("steps", mode="before")
    @classmethod
    def _bare_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    def step_params(self, source: str = "config") -> list[tuple[str, Section]]:
        """Each step's name and validated params (StropError naming ``steps.N.key``)."""
        return [_validate_step(i, spec, source) for i, spec in enumerate(self.steps)]


def _validate_step(i: int, spec: dict[str, Any], source: str) -> tuple[str, Section]:

    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in STEPS:
        close = closest(str(name), list(STEPS)) if name else None
        hint = f"; did you mean {close!r}?" if close else ""
        what = f"unknown step {name!r}" if name else "missing 'name'"
        raise StropError(f"{source}: steps.{i}.name: {what}{hint} (steps: {', '.join(STEPS)})")
    params_cls = STEPS[name].Params
    # Validating through a wrapper puts "steps.<i>." in front of every key an error names, and
    # lets the shared formatter suggest keys from this step's own params.
    wrapper = create_model("PrepareSteps", __base__=Section, steps=(dict[int, params_cls], ...))
    try:
        parsed = wrapper.model_validate({"steps": {i: spec}})
    except ValidationError as exc:
        raise StropError(format_validation_error(exc, source, wrapper)) from None
    return name, parsed.steps[i]


def _apply_prepare_override(tree: dict, override: str) -> None:
    """Dotted overrides; ``steps.<name or index>.key=value`` reaches into one step."""
    if "=" not in override:
        apply_override(tree, override)  # raises the usual "expected key.path=value"
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    steps = tree.get("steps")
    if parts[0] == "steps" and len(parts) >= 3 and isinstance(steps, list):
        sel = parts[1]
        names = [
            s if isinstance(s, str) else s.get("name") if isinstance(s, dict) else None
            for s in steps
        ]
        idx = names.index(sel) if sel in names else None
        if idx is None and sel.isdigit() and int(sel) < len(steps):
            idx = int(sel)
        if idx is None:
            raise StropError(f"override {override!r}: no step named {sel!r}")
        if isinstance(steps[idx], str):
            steps[idx] = {"name": steps[idx]}
        sub = {"s": steps[idx]}
        apply_override(sub, "s." + ".".join(parts[2:]) + "=" + value)
        return
    apply_override(tree, override)


def load_prepare_config(
    path: str | Path | None, overrides: list[str] = (), raw: dict | None = None
) -> tuple[PrepareConfig, list[tuple[str, Section]]]:
    """Read YAML (or take ``raw``), apply overrides, validate the config and every step."""
    tree, source = read_yaml_tree(path, raw)
    for ov in overrides:
        _apply_prepare_override(tree, ov)
    cfg = validate_tree(PrepareConfig, tree, source)
    if cfg.ray.address is not None:
        for key in ("num_cpus", "object_store_memory"):
            if getattr(cfg.ray, key) is not None:
                raise StropError(
                    f"{source}: ray.{key}: only for the local cluster strop starts "
                    f"(ray.address: null); the cluster at {cfg.ray.address!r} has its own."
                )
    steps = cfg.step_params(source)
    for spec in cfg.inputs:
        if not Path(spec.path).exists():
            raise StropError(f"{source}: inputs: file not found: {spec.path}")
    return cfg, steps
