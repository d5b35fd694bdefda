"""YAML + dotted overrides -> validated Config, with errors that name the key."""

from __future__ import annotations

import difflib
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from strop.config.schema import Config
from strop.errors import StropError

M = TypeVar("M", bound=BaseModel)


def apply_override(tree: dict, override: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML (1e-4, true, [..])."""
    if "=" not in override:
        raise StropError(f"override {override!r}: expected key.path=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise StropError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def _as_model(ann) -> type[BaseModel] | None:
    """The pydantic model an annotation names, directly or as a member of a union."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if get_origin(ann) in (Union, UnionType):
        return next((m for a in get_args(ann) if (m := _as_model(a))), None)
    return None


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at ``loc``, walking nested sections and the items of list/dict
    fields (``tasks.0``, ``models.base``)."""
    node = model
    for part in loc:
        section = _as_model(node)
        if section is not None:
            field = section.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        else:  # list[X] / dict[K, X]: this part is an index or a key
            args = get_args(node)
            if not args:
                return []
            node = args[-1]
    section = _as_model(node)
    return list(section.model_fields) if section else []


def closest(key: str, valid: list[str]) -> str | None:
    """The valid key a typo most likely meant: a prefix relation first (lr_rate -> lr,
    epoch -> epochs), then plain similarity."""
    longer = [v for v in valid if v.startswith(key)]
    if longer:
        return min(longer, key=len)
    shorter = [v for v in valid if key.startswith(v)]
    if shorter:
        return max(shorter, key=len)
    found = difflib.get_close_matches(key, valid, n=1)
    return found[0] if found else None


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel]) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(model, loc[:-1])
            close = closest(str(loc[-1]), valid)
            suggestion = ".".join([*map(str, loc[:-1]), close]) if close else ""
            hint = f"; did you mean {suggestion!r}?" if close else ""
            problems.append(f"unknown key {key!r}{hint}")
        elif not loc:  # a whole-config check: its message names the keys itself
            problems.append(err["msg"].removeprefix("Value error, "))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            problems.append(f"{key}: {msg}{shown}" if not msg.startswith(key) else msg)
    return f"{source}: " + "; ".join(problems)


def read_yaml_tree(path: str | Path | None, raw: dict | None = None) -> tuple[dict, str]:
    """The mapping in a YAML file (merged over ``raw``) and the name errors should cite."""
    tree: dict[str, Any] = dict(raw or {})
    if path is None:
        return tree, "config"
    p = Path(path)
    if not p.exists():
        raise StropError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise StropError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(loaded, dict):
        raise StropError(f"{path}: expected a mapping at the top level")
    tree.update(loaded)
    return tree, str(path)


def validate_tree(model: type[M], tree: dict, source: str) -> M:
    """``model.model_validate(tree)``, with a validation error turned into the one-sentence
    StropError every strop config reports (key named, closest valid key suggested)."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise StropError(format_validation_error(exc, source, model)) from None


def load_config(
    path: str | Path | None, overrides: list[str] = (), raw: dict | None = None
) -> Config:
    """Read YAML (or take ``raw``), apply overrides, validate strictly."""
    tree, source = read_yaml_tree(path, raw)
    for ov in overrides:
        apply_override(tree, ov)
    cfg = validate_tree(Config, tree, source)
    from strop.models.transforms import check_method_fits, validate_method_params
    from strop.train.objectives import OBJECTIVES

    if cfg.stage not in OBJECTIVES:
        raise StropError(
            f"{source}: stage: {cfg.stage!r} is not implemented yet "
            f"(available: {', '.join(OBJECTIVES)})"
        )
    validate_method_params(cfg.method, source)
    check_method_fits(cfg, source)
    from strop.train.optim import check_optimizer

    check_optimizer(cfg, source)
    if cfg.train.eval_tasks:
        from strop.train.task_eval import parse_eval_tasks

        parse_eval_tasks(cfg.train.eval_tasks, source)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
