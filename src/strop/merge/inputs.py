"""Merge inputs: model names, HF dirs, strop run dirs and adapter dirs -> tensor sources,
plus what provenance and the tokenizer check need (files to hash, tokenizer dir)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from strop.errors import StropError
from strop.hub import KNOWN_MODELS, resolve_model
from strop.merge.io import LoraSource, SafetensorsDir, Source

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


@dataclass
class Input:
    label: str
    spec: str
    kind: str  # hf | run | adapter | checkpoint
    source: Source
    model_dir: Path
    """Where config.json lives (the base, for an adapter)."""
    tokenizer_dir: Path
    hashed: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file())


def run_final_dir(run_dir: Path) -> Path:
    """A finished run's model: final-merged/ (a full HF dir) when the run wrote one, else
    final/ (an HF dir or an adapter)."""
    for sub in ("final-merged", "final"):
        if (run_dir / sub).is_dir():
            return run_dir / sub
    raise StropError(f"{run_dir}: a strop run dir without final/ (did the run finish?)")


def _tokenizer_dir(*dirs: Path) -> Path:
    for d in dirs:
        if any((d / f).exists() for f in TOKENIZER_FILES):
            return d
    return dirs[-1]


def open_input(spec: str, label: str, key: str, tmp: list[tempfile.TemporaryDirectory]) -> Input:
    """Resolve one ``models.N.model`` (or ``base``) entry; ``key`` names it in errors."""
    path = Path(spec).expanduser()
    if spec in KNOWN_MODELS or (path.is_file() and path.suffix == ".gguf"):
        d = resolve_model(spec)
        return Input(label, spec, "hf", SafetensorsDir(d, label), d, d, _files(d))
    if not path.exists():
        raise StropError(f"{key}: not found: {spec} (not a known model name or a directory)")
    if not path.is_dir():
        raise StropError(f"{key}: {spec} is not a directory")
    kind = "hf"
    if (path / "config.yaml").exists() and not (path / "config.json").exists():
        kind, path = "run", run_final_dir(path)
    if (path / "strop_adapter.json").exists():
        raise StropError(
            f"{key}: {spec} holds bottleneck adapters (method adapter), which cannot be merged: "
            "they are nonlinear, so no weight update reproduces them; load the adapter dir "
            "itself with strop chat/generate/eval"
        )
    if (path / "adapter_config.json").exists():
        return _open_adapter(spec, label, key, path, tmp)
    if not (path / "config.json").exists():
        raise StropError(
            f"{key}: {spec} is neither an HF model dir (config.json), a strop run dir "
            "(config.yaml + final/) nor an adapter dir (adapter_config.json)"
        )
    return Input(label, spec, kind, SafetensorsDir(path, label), path, path, _files(path))


def plain_lora(cfg: dict) -> bool:
    """Adapters LoraSource folds itself; anything else goes through peft."""
    return (
        cfg.get("peft_type") == "LORA"
        and not cfg.get("use_dora")
        and cfg.get("bias", "none") == "none"
        and not cfg.get("lora_bias")
        and not cfg.get("modules_to_save")
        and not cfg.get("trainable_token_indices")
        and not cfg.get("layer_replication")
    )


# peft methods that add inputs instead of changing weights: nothing to fold into a model.
SOFT_PROMPT_TYPES = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING")


def _open_adapter(
    spec: str, label: str, key: str, path: Path, tmp: list[tempfile.TemporaryDirectory]
) -> Input:
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise StropError(f"{key}: {path}/adapter_config.json: invalid JSON ({exc})") from None
    if cfg.get("peft_type") in SOFT_PROMPT_TYPES:
        raise StropError(
            f"{key}: {path} is a {cfg['peft_type']} adapter, which cannot be merged: its virtual "
            "tokens or key/value prefixes are extra inputs, not a change to any weight; load "
            "the adapter dir itself with strop chat/generate/eval"
        )
    base_name = cfg.get("base_model_name_or_path")
    if not base_name:
        raise StropError(f"{key}: {path}/adapter_config.json names no base_model_name_or_path")
    try:
        base_dir = resolve_model(base_name)
    except StropError as exc:
        raise StropError(f"{key}: the adapter's base model: {exc}") from None
    hashed = _files(path) + _files(base_dir)
    tok_dir = _tokenizer_dir(path, base_dir)
    if plain_lora(cfg):
        base = SafetensorsDir(base_dir, f"{label} base")
        src = LoraSource(base, path, label)
        return Input(label, spec, "adapter", src, base_dir, tok_dir, hashed)
    # DoRA, IA3, modules_to_save, ...: let peft fold it (whole model in memory, once).
    holder = tempfile.TemporaryDirectory(prefix="strop-merge-")
    tmp.append(holder)
    out = Path(holder.name)
    _peft_merge(base_dir, path, out)
    note = f"{cfg.get('peft_type')} adapter merged by peft in memory (not streamed)"
    src = SafetensorsDir(out, label)
    return Input(label, spec, "adapter", src, base_dir, tok_dir, hashed, [note])


def _peft_merge(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    from strop.models.load import load_model

    model, _, _ = load_model(str(base_dir), "fp32", adapter=str(adapter_dir))
    model.merge_and_unload(safe_merge=True).save_pretrained(out, safe_serialization=True)


def vocab_mismatch(a: Input, b: Input) -> str | None:
    """None when two inputs' tokenizers share one vocabulary, else what differs."""
    from strop.models.load import load_tokenizer

    va, vb = (
        load_tokenizer(a.tokenizer_dir).get_vocab(),
        load_tokenizer(b.tokenizer_dir).get_vocab(),
    )
    if va == vb:
        return None
    only_a = sorted(set(va) - set(vb), key=va.get)[:3]
    only_b = sorted(set(vb) - set(va), key=vb.get)[:3]
    moved = sorted((t for t in set(va) & set(vb) if va[t] != vb[t]), key=va.get)[:3]
    parts = [f"{len(va)} vs {len(vb)} tokens"]
    if only_a:
        parts.append(f"only {a.label} has " + ", ".join(f"{t!r} (id {va[t]})" for t in only_a))
    if only_b:
        parts.append(f"only {b.label} has " + ", ".join(f"{t!r} (id {vb[t]})" for t in only_b))
    if moved:
        parts.append("different ids for " + ", ".join(f"{t!r} ({va[t]}/{vb[t]})" for t in moved))
    return "; ".join(parts)


def chat_template(inp: Input) -> str | None:
    from strop.models.load import load_tokenizer

    return load_tokenizer(inp.tokenizer_dir).chat_template
