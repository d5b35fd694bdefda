"""checkpoint_average inputs: the last k committed checkpoints of one strop run.

A checkpoint (strop.train.checkpoint) is a torch.distributed.checkpoint (DCP) of the
*trainable* weights and the optimizer state, read through its JSON index (never the pickled
``.metadata``, which could run code planted in it). Frozen weights are not in it: they are the
run's base model, named in its config.yaml. So each checkpoint becomes a Source that reads a
tensor from the DCP when the run trained it and from the base otherwise; LoRA checkpoints hold
A and B, folded into the base weight as W + s·BA (averaging the products, not A and B separately,
because the update is bilinear in them).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import yaml

from strop.errors import StropError
from strop.hub import resolve_model
from strop.merge.io import SafetensorsDir, TensorInfo
from strop.train.checkpoint import MARKER, JsonIndexReader, read_index

warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
_LORA_DCP = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.[^.]+\.weight$")
FULL_WEIGHT_METHODS = ("full", "freeze", "bitfit")


def committed_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / MARKER).exists()] if root.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def run_method(run_dir: Path) -> dict:
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise StropError(f"{run_dir}: not a strop run dir (no config.yaml)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StropError(f"{cfg_path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise StropError(f"{cfg_path}: not a strop run config (a mapping)")
    return cfg


class CheckpointSource:
    """One DCP checkpoint of a run, seen as a full model over the run's base weights."""

    def __init__(self, ckpt: Path, base: SafetensorsDir, method: dict, label: str) -> None:
        self.ckpt, self.base, self.label = ckpt, base, label
        meta = read_index(ckpt).state_dict_metadata
        keys = [k for k in meta if k.startswith("model.")]
        name = method.get("name", "full")
        self._full: dict[str, str] = {}
        self._lora: dict[str, dict[str, str]] = {}
        if name in FULL_WEIGHT_METHODS:
            for hf_name in base.names():
                hit = [k for k in keys if k.endswith("." + hf_name)]
                if hit:
                    self._full[hf_name] = min(hit, key=len)
        elif name == "lora":
            for k in keys:
                m = _LORA_DCP.search(k)
                if m:
                    self._lora.setdefault(f"{m.group(1)}.weight", {})[m.group(2)] = k
            r, alpha = method.get("r", 16), method.get("alpha", 32)
            self.scale = alpha / r**0.5 if method.get("rslora") else alpha / r
        else:
            raise StropError(
                f"{label}: checkpoint_average supports runs with method full, freeze, bitfit "
                f"or lora (this run used {name!r})"
            )
        if not self._full and not self._lora:
            raise StropError(f"{ckpt}: no model weights found in the checkpoint")
        self._meta = meta

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def _read(self, key: str) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp

        md = self._meta[key]
        t = torch.empty(md.size, dtype=md.properties.dtype)
        try:  # loads this one tensor only
            dcp.load({key: t}, storage_reader=JsonIndexReader(self.ckpt))
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise StropError(
                f"{self.label}: cannot read {key!r} from {self.ckpt} ({first})"
            ) from None
        return t

    def get(self, name: str) -> torch.Tensor:
        if name in self._full:
            return self._read(self._full[name])
        w = self.base.get(name)
        if name in self._lora:
            ab = self._lora[name]
            a, b = self._read(ab["A"]).float(), self._read(ab["B"]).float()
            return w.float() + (b @ a) * self.scale
        return w


def checkpoint_sources(run_dir: Path, last: int, label: str) -> tuple[list, Path]:
    """Sources for the newest ``last`` committed checkpoints, and the run's base model dir."""

    cfg = run_method(run_dir)
    found = committed_checkpoints(run_dir)
    if not found:
        raise StropError(f"{run_dir}: no committed checkpoints under checkpoints/")
    if len(found) < last:
        raise StropError(
            f"params.last: {last} checkpoints asked for, {run_dir} has {len(found)} "
            f"({', '.join(p.name for p in found)})"
        )
    base_dir = resolve_model(str((cfg.get("model") or {}).get("name", "")))
    base = SafetensorsDir(base_dir, f"{label} base")
    method = cfg.get("method") or {"name": "full"}
    return [CheckpointSource(p, base, method, f"{label}/{p.name}") for p in found[-last:]], base_dir
