"""YAML + dotted overrides -> validated Config, with errors that name the key.

This module is the bottom of strop's config layer: it imports pydantic, yaml and strop.errors
only, so every verb can load and check its config before importing anything heavy.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from strop.config.schema import PACKING_STAGES, STAGE_SECTIONS, Config
from strop.errors import StropError

M = TypeVar("M", bound=BaseModel)


def apply_override(tree: dict, override: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML (1e-4, true, [..])."""
    if "=" not in override:
        raise StropError(f"override {override!r}: expected key.path=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise StropError(f"override {override!r}: the key before '=' is empty or has an empty part")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise StropError(f"override {override!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise StropError(f"override {override!r}: the value is not valid YAML ({exc})") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, which once changed a run's model without a word)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep=False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _tag_field(ann) -> str | None:
    """The field a tagged union picks its member by (``method``: ``name``; an eval task:
    ``type``): the ``discriminator`` of its ``Annotated[..., Field(discriminator=...)]``."""
    if get_origin(ann) is not Annotated:
        return None
    found = (getattr(meta, "discriminator", None) for meta in get_args(ann)[1:])
    return next((d for d in found if isinstance(d, str)), None)


def _field_type(field: FieldInfo):
    """A field's annotation, still carrying its tag field: pydantic moves the ``Field`` of an
    annotated union field (``method: Method``) into the FieldInfo, so put it back."""
    if isinstance(field.discriminator, str):
        return Annotated[field.annotation, field]
    return field.annotation


def _tagged_union(ann) -> dict[str, type[BaseModel]] | None:
    """{tag: member} for a union discriminated by a Literal field, else None."""
    field = _tag_field(ann)
    if field is None or get_origin(get_args(ann)[0]) not in (Union, UnionType):
        return None
    members = {}
    for a in get_args(get_args(ann)[0]):
        if not (isinstance(a, type) and issubclass(a, BaseModel)) or field not in a.model_fields:
            return None
        for tag in get_args(a.model_fields[field].annotation):
            members[tag] = a
    return members or None


def _as_model(ann) -> type[BaseModel] | None:
    """The pydantic model an annotation names, directly or as a member of a union."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if get_origin(ann) is Annotated:
        return _as_model(get_args(ann)[0])
    if get_origin(ann) in (Union, UnionType):
        return next((m for a in get_args(ann) if (m := _as_model(a))), None)
    return None


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at ``loc``, walking nested sections, the items of list/dict
    fields (``tasks.0``, ``models.base``) and the member a tag picks in a tagged union."""
    node = model
    for part in loc:
        union = _tagged_union(node)
        if union is not None and part in union:
            node = union[part]
            continue
        section = _as_model(node)
        if section is not None:
            field = section.model_fields.get(str(part))
            if field is None:
                return []
            node = _field_type(field)
        else:  # list[X] / dict[K, X]: this part is an index or a key
            args = get_args(node)
            if not args:
                return []
            node = args[-1]
    section = _as_model(node)
    tag = _tag_field(node) if _tagged_union(node) else None
    return [k for k in section.model_fields if k != tag] if section else []


def _split_at_tag(model: type[BaseModel], loc: tuple) -> tuple[tuple, str | None, tuple]:
    """``('method', 'lora', 'r')`` -> ``(('method',), 'lora', ('r',))``: pydantic puts the
    chosen member's tag in the location of an error inside a tagged union."""
    node = model
    for i, part in enumerate(loc):
        union = _tagged_union(node)
        if union is not None and part in union:
            return loc[:i], str(part), loc[i + 1 :]
        section = _as_model(node)
        if section is None or str(part) not in section.model_fields:
            args = get_args(node)
            node = args[-1] if args else None
            continue
        node = _field_type(section.model_fields[str(part)])
    return loc, None, ()


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


def _problem(err: dict, model: type[BaseModel]) -> tuple[str, str]:
    """(dotted key, one clause saying what is wrong with it) for one pydantic error."""
    loc = tuple(err["loc"])
    outer, tag, inner = _split_at_tag(model, loc)
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        union = _annotation_at(model, loc)
        tags, field = list(_tagged_union(union) or {}), _tag_field(union) or "name"
        got = (err.get("ctx") or {}).get("tag")
        where = ".".join(map(str, (*loc, field)))
        if got is None or err["type"] == "union_tag_not_found":
            return where, f"{where}: required (one of {', '.join(tags)})"
        close = closest(str(got), tags)
        hint = f"; did you mean {close!r}?" if close else ""
        # "unknown method 'x'" for a section; "unknown type 'x'" for an item of a list
        what = loc[-1] if loc and isinstance(loc[-1], str) else field
        return where, f"{where}: unknown {what} {got!r} (known: {', '.join(tags)}){hint}"
    if tag is not None:  # inside a tagged union: "method (lora): unknown key 'rank'"
        prefix = ".".join(map(str, outer))
        sub = dict(err, loc=inner)
        inner_key, clause = _problem(sub, _valid_member(model, outer, tag))
        return f"{prefix}.{inner_key}" if inner else prefix, f"{prefix} ({tag}): {clause}"
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        close = closest(str(loc[-1]), valid)
        suggestion = ".".join([*map(str, loc[:-1]), close]) if close else ""
        hint = f"; did you mean {suggestion!r}?" if close else ""
        return key, f"unknown key {key!r}{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a whole-config check: its message names the keys itself
        return msg.split(":", 1)[0], msg
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return key, f"{key}: {msg}{shown}" if not msg.startswith(key) else msg


def _annotation_at(model: type[BaseModel], loc: tuple):
    node: Any = model
    for part in loc:
        section = _as_model(node)
        node = _field_type(section.model_fields[str(part)]) if section else get_args(node)[-1]
    return node


def _valid_member(model: type[BaseModel], outer: tuple, tag: str) -> type[BaseModel]:
    return _tagged_union(_annotation_at(model, outer))[tag]


def format_validation_error(
    exc: ValidationError, source: str, model: type[BaseModel], overrides: list[str] = ()
) -> str:
    """One sentence for all of a validation error's problems. A problem with a key that a
    command-line override set is attributed to that override, not to the YAML file."""
    by_key = {o.split("=", 1)[0].strip(): o for o in overrides if "=" in o}
    problems, from_cli = [], []
    for err in exc.errors():
        key, clause = _problem(err, model)
        hit = next((o for k, o in by_key.items() if _related(key, k)), None)
        (from_cli if hit else problems).append(f"{clause} (from {hit!r})" if hit else clause)
    parts = []
    if problems:
        parts.append(f"{source}: " + "; ".join(problems))
    if from_cli:
        parts.append("command line: " + "; ".join(from_cli))
    return "; ".join(parts)


def _related(a: str, b: str) -> bool:
    """One dotted key is the other or a section holding it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def read_yaml_tree(path: str | Path | None, raw: dict | None = None) -> tuple[dict, str]:
    """The mapping in a YAML file (merged over ``raw``) and the name errors should cite."""
    tree: dict[str, Any] = copy.deepcopy(raw or {})  # overrides must not edit the caller's
    if path is None:
        return tree, "config"
    p = Path(path)
    if not p.exists():
        raise StropError(f"{path}: config file not found")
    if p.is_dir():
        raise StropError(f"{path}: is a directory; give the path of a YAML config file")
    try:
        loaded = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise StropError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StropError(f"{path}: cannot read the config ({exc})") from None
    if not isinstance(loaded, dict):
        raise StropError(f"{path}: expected a mapping at the top level")
    tree.update(loaded)
    return tree, str(path)


def validate_tree(model: type[M], tree: dict, source: str, overrides: list[str] = ()) -> M:
    """``model.model_validate(tree)``, with a validation error turned into the one-sentence
    StropError every strop config reports (key named, closest valid key suggested)."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise StropError(format_validation_error(exc, source, model, overrides)) from None


def load_config(
    path: str | Path | None, overrides: list[str] = (), raw: dict | None = None
) -> Config:
    """Read YAML (or take ``raw``), apply overrides, validate strictly. Checks that need
    models, data or eval tasks run where those live, after this (e.g. strop.train.setup)."""
    tree, source = read_yaml_tree(path, raw)
    for ov in overrides:
        apply_override(tree, ov)
    return validate_tree(Config, tree, source, overrides)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML that load_config reads back to the same Config: sections
    other stages read, and data.packing where the stage does not pack, are left out."""
    tree = cfg.model_dump(mode="json")
    for name in STAGE_SECTIONS:
        if tree.get(name) is None:
            tree.pop(name, None)
    if cfg.stage not in PACKING_STAGES:
        tree["data"].pop("packing", None)
    return yaml.safe_dump(tree, sort_keys=False)
