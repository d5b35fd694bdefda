"""Streaming tensor I/O: read one tensor at a time, write safetensors shards incrementally.

Readers open a shard with ``safetensors.safe_open`` for each tensor and close it again, so no
mapping of a whole shard stays resident. The writer knows every output tensor's name, shape
and dtype before the first is computed, so it writes each shard's header up front and then
appends tensor bytes as they arrive: no shard is ever assembled in memory. Peak memory is the
inputs of one tensor plus its fp32 workspace (benchmarks/merge_memory.py measures it).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from strop.errors import StropError

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@contextlib.contextmanager
def open_safetensors(path: Path, label: str) -> Iterator:
    """``safe_open``, with a damaged or truncated file as one sentence naming it (exit 2)."""
    try:
        f = safe_open(path, "pt")
    except Exception as exc:  # SafetensorError, OSError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StropError(
            f"{label}: {path} is not a readable safetensors file ({detail}); "
            "it may be truncated (an interrupted copy or download) or damaged"
        ) from None
    with f:
        yield f


class Source(Protocol):
    """One merge input, tensor by tensor."""

    label: str

    def names(self) -> list[str]: ...
    def info(self, name: str) -> TensorInfo: ...
    def get(self, name: str) -> torch.Tensor: ...


class SafetensorsDir:
    """An HF model dir's weights: ``model.safetensors`` or shards listed in its index."""

    def __init__(self, path: Path, label: str) -> None:
        self.path, self.label = Path(path), label
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = sorted(set(weight_map.values()))
                if any(not isinstance(f, str) or Path(f).name != f for f in files):
                    raise ValueError("a shard is named by a path, not a file name in the dir")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StropError(f"{label}: {index} is not a safetensors index ({exc})") from None
        elif (self.path / "model.safetensors").exists():
            files = ["model.safetensors"]
        else:
            raise StropError(
                f"{label}: {self.path} has no safetensors weights (model.safetensors or "
                "model.safetensors.index.json); strop merge reads safetensors only"
            )
        self._file: dict[str, Path] = {}
        self._info: dict[str, TensorInfo] = {}
        for fname in files:
            f_path = self.path / fname
            if not f_path.exists():
                raise StropError(f"{label}: shard {f_path} listed in the index is missing")
            with open_safetensors(f_path, label) as f:
                for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    sl = f.get_slice(key)
                    dtype = ST_DTYPES.get(sl.get_dtype())
                    if dtype is None:
                        raise StropError(f"{label}: tensor {key!r} has dtype {sl.get_dtype()}")
                    self._file[key] = f_path
                    self._info[key] = TensorInfo(tuple(sl.get_shape()), dtype)

    def names(self) -> list[str]:
        return list(self._file)

    def info(self, name: str) -> TensorInfo:
        return self._info[name]

    def get(self, name: str) -> torch.Tensor:
        # Open per tensor: a mapping kept open would keep every page read so far resident.
        with open_safetensors(self._file[name], self.label) as f:
            return f.get_tensor(name)

    def files(self) -> list[Path]:
        return sorted(set(self._file.values()))


class StateDictSource:
    """Tensors already in memory (tests, and the in-memory reference merge)."""

    def __init__(self, tensors: dict[str, torch.Tensor], label: str) -> None:
        self.tensors, self.label = tensors, label

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        t = self.tensors[name]
        return TensorInfo(tuple(t.shape), t.dtype)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def pattern_value(patterns: dict, module: str, default: float) -> float:
    """peft's rank_pattern / alpha_pattern: a key matches the module name or its dotted tail."""
    for key, value in patterns.items():
        if module == key or re.fullmatch(rf"(.*\.)?(?:{key})", module):
            return value
    return default


class LoraSource:
    """A base model with a plain LoRA adapter folded in, tensor by tensor:
    W' = W + s·(B A), s = α/r (α/√r with rsLoRA), in fp32."""

    def __init__(self, base: SafetensorsDir, adapter_dir: Path, label: str) -> None:
        self.base, self.label, self.adapter_dir = base, label, adapter_dir
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        self.fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        self._adapter_file = adapter_dir / "adapter_model.safetensors"
        pairs: dict[str, dict[str, str]] = {}
        with open_safetensors(self._adapter_file, label) as f:
            for key in f.keys():  # noqa: SIM118
                m = _LORA_KEY.match(key)
                if m is None:
                    raise StropError(f"{label}: adapter tensor {key!r} is not a LoRA A/B weight")
                pairs.setdefault(m.group(1), {})[m.group(2)] = key
        self._pairs: dict[str, tuple[str, str, float]] = {}
        names = set(base.names())
        for module, ab in pairs.items():
            if set(ab) != {"A", "B"} or f"{module}.weight" not in names:
                raise StropError(
                    f"{label}: adapter module {module!r} has no matching base weight "
                    f"{module}.weight in {base.path} (or lacks lora_A/lora_B)"
                )
            r = pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
            alpha = pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
            scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
            self._pairs[f"{module}.weight"] = (ab["A"], ab["B"], scale)

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def get(self, name: str) -> torch.Tensor:
        w = self.base.get(name)
        if name not in self._pairs:
            return w
        a_key, b_key, scale = self._pairs[name]
        with open_safetensors(self._adapter_file, self.label) as f:
            a, b = f.get_tensor(a_key).float(), f.get_tensor(b_key).float()
        delta = (b @ a) * scale
        if self.fan_in_fan_out:
            delta = delta.T
        if delta.shape != w.shape:
            raise StropError(
                f"{self.label}: LoRA update for {name!r} has shape {tuple(delta.shape)}, "
                f"the base weight {tuple(w.shape)}"
            )
        return w.float() + delta  # stays fp32: the merge computes in fp32 anyway


def plan_shards(
    plan: list[tuple[str, TensorInfo]], max_bytes: int
) -> list[list[tuple[str, TensorInfo]]]:
    """Split the ordered tensors into shards of at most ``max_bytes`` (a bigger tensor gets a
    shard of its own)."""
    shards: list[list[tuple[str, TensorInfo]]] = [[]]
    size = 0
    for name, info in plan:
        if shards[-1] and size + info.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, info))
        size += info.nbytes
    return shards


def _header(entries: list[tuple[str, TensorInfo]]) -> bytes:
    head: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, info in entries:
        head[name] = {
            "dtype": ST_NAMES[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.nbytes],
        }
        offset += info.nbytes
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Writes tensors, in the planned order, straight into safetensors shard files."""

    def __init__(self, out_dir: Path, plan: list[tuple[str, TensorInfo]], max_bytes: int):
        self.out_dir = out_dir
        self.shards = plan_shards(plan, max_bytes)
        n = len(self.shards)
        self.files = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._order: Iterator[tuple[int, str, TensorInfo]] = (
            (i, name, info) for i, shard in enumerate(self.shards) for name, info in shard
        )
        self._shard = -1
        self._fh = None
        self.total_bytes = sum(info.nbytes for _, info in plan)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        i, expected, info = next(self._order)
        if name != expected:
            raise RuntimeError(f"writer: got {name!r}, planned {expected!r}")
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise RuntimeError(f"writer: {name!r} is {tensor.dtype} {tuple(tensor.shape)}")
        if i != self._shard:
            self._open(i)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))

    def _open(self, i: int) -> None:
        if self._fh is not None:
            self._fh.close()
        self._shard = i
        self._fh = open(self.out_dir / self.files[i], "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(_header(self.shards[i]))

    def abort(self) -> None:
        """Drop the open shard after a failure (its buffered bytes may no longer fit)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def close(self) -> None:
        if next(self._order, None) is not None:
            raise RuntimeError("writer: closed before every planned tensor was written")
        if self._fh is not None:
            self._fh.close()
        if len(self.files) > 1:
            weight_map = {
                name: self.files[i] for i, shard in enumerate(self.shards) for name, _ in shard
            }
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
