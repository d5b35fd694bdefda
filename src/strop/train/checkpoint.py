"""Atomic, resumable checkpoints that a different world size can load, and that never run code.

Layout of ``checkpoints/step-N/``:

- ``__R_0.distcp``: a torch.distributed.checkpoint (DCP) of the trainable weights and the
  optimizer's tensors, one file per rank (resharded on load, so 2 processes resume 1 and vice
  versa). Tensors only: each is read back with ``torch.load(weights_only=True)``.
- ``dcp.json``: DCP's index (which tensor chunk lies where) as JSON. DCP also writes the same
  index as a pickle (``.metadata``) for torch's own tools; strop never reads that file.
- ``state.json``: everything else in the model/optimizer state dict (param groups, counters),
  with ``{"__tensor__": key}`` where a tensor sits.
- ``rng-rank{r}.pt``: each rank's RNG streams as tensors, ints and lists, read back with
  ``torch.load(weights_only=True)``.
- ``trainer.json`` (step, data position, counters) and the ``COMMITTED`` marker.

A run dir is data: resuming from it must never execute code planted in it, so nothing here is
unpickled (issue 18). The dir is written under ``.tmp-step-N`` and renamed once complete; only a
dir holding the marker counts, so a failed save (a full disk) leaves the previous one intact.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from strop.errors import StropError, StropRuntimeError, disk_full

MARKER = "COMMITTED"
INDEX = "dcp.json"
STATE = "state.json"
# DCP warns on every single-process save/load that no process group exists; that is intended.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# Frozen weights come from the base model on load, so they are absent from the checkpoint.
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)
_DTYPES = {str(v).removeprefix("torch."): v for v in vars(torch).values() if type(v) is torch.dtype}


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---- RNG: tensors, ints and lists (torch.load(weights_only=True) reads them) ----------------


def rng_state() -> dict:
    py_version, py_words, py_gauss = random.getstate()
    np_name, np_words, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_words), py_gauss],
        "numpy": [np_name, np_words.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py_version, py_words, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_words), py_gauss))
    np_name, np_words, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_name, np.asarray(np_words, dtype=np.uint32), np_pos, np_has_gauss, np_gauss)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore_rng(path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor):
            raise ValueError("not a dict holding a 'torch' generator state")
        set_rng_state(state)
    except Exception as exc:  # weights_only refuses anything but tensors and plain data
        raise StropError(
            f"{path}: not an RNG state strop wrote ({_first_line(exc)}); the checkpoint is damaged "
            "or was not written by this version of strop"
        ) from None


# ---- state dict <-> (tensors by key, JSON tree) ---------------------------------------------


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], path: tuple = ()) -> Any:
    """``obj`` as JSON-ready data with ``{"__tensor__": key}`` for each tensor, which goes into
    ``tensors`` under its dotted path (the key DCP itself would give it)."""
    if isinstance(obj, torch.Tensor):
        key = ".".join(path)
        if key in tensors:
            raise StropRuntimeError(f"checkpoint: two tensors share the key {key!r}")
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: split_tensors(v, tensors, (*path, k)) for k, v in obj.items()}
        return {
            "__items__": [
                [split_tensors(k, {}), split_tensors(v, tensors, (*path, str(k)))]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, list | tuple):
        items = [split_tensors(v, tensors, (*path, str(i))) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise StropRuntimeError(
        f"checkpoint: cannot store {type(obj).__name__} at {'.'.join(path)} as plain data"
    )


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    """The inverse of :func:`split_tensors`."""
    if isinstance(tree, list):
        return [join_tensors(v, tensors, where) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        key = tree["__tensor__"]
        if key not in tensors:
            raise StropError(
                f"{where}: the checkpoint holds {key!r}, which this model or optimizer lacks "
                "(was the model or method changed since it was saved?)"
            )
        return tensors[key]
    if "__tuple__" in tree:
        return tuple(join_tensors(v, tensors, where) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {
            _hashable(join_tensors(k, {}, where)): join_tensors(v, tensors, where)
            for k, v in tree["__items__"]
        }
    return {k: join_tensors(v, tensors, where) for k, v in tree.items()}


def tensor_tree(obj: Any) -> Any:
    """Only the tensors of ``obj``, nested as in ``obj`` (lists become dicts by index): DCP
    flattens it to the keys :func:`split_tensors` gives, and torch's own DCP tools
    (``dcp_to_torch_save``) rebuild ``{"model": ..., "optim": ...}`` from it."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict | list | tuple):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        subtrees = ((str(k), tensor_tree(v)) for k, v in items)
        return {k: t for k, t in subtrees if isinstance(t, torch.Tensor) or t}
    return None


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list | tuple) else key


def _tensor_keys(tree: Any) -> list[str]:
    if isinstance(tree, list):
        return [k for v in tree for k in _tensor_keys(v)]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return [tree["__tensor__"]]
        return [k for v in tree.values() for k in _tensor_keys(v)]
    return []


# ---- DCP with a JSON index ------------------------------------------------------------------


class _JsonIndexWriter(FileSystemWriter):
    """DCP's file writer, plus the index as JSON (rank 0, once every shard is written)."""

    def finish(self, metadata: Metadata, results: list) -> None:
        super().finish(metadata, results)
        (Path(self.path) / INDEX).write_text(json.dumps(index_to_json(metadata)))


class JsonIndexReader(FileSystemReader):
    """DCP's file reader, with the index from ``dcp.json`` instead of the pickled ``.metadata``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return read_index(Path(self.path))


def index_to_json(md: Metadata) -> dict:
    tensors = {}
    for key, m in md.state_dict_metadata.items():
        if not isinstance(m, TensorStorageMetadata):
            raise StropRuntimeError(f"checkpoint: {key!r} is not a tensor")
        tensors[key] = {
            "dtype": str(m.properties.dtype).removeprefix("torch."),
            "size": list(m.size),
            "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks],
        }
    storage = [
        [
            i.fqn,
            None if i.offset is None else list(i.offset),
            i.index,
            s.relative_path,
            s.offset,
            s.length,
        ]
        for i, s in md.storage_data.items()
    ]
    return {
        "format": "strop-dcp-index",
        "version": md.version,
        "tensors": tensors,
        "storage": storage,
    }


def read_index(ckpt: Path) -> Metadata:
    """A checkpoint's DCP index from its JSON copy; refuses anything that is not plain data."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    where = ckpt / INDEX
    if not where.exists():
        raise StropError(
            f"{ckpt}: no {INDEX} (written by an older strop, whose checkpoints keep their index "
            "only as a pickle, which strop no longer loads); start the run afresh "
            "(train.resume=never) or resume from a checkpoint this version wrote"
        )
    try:
        raw = json.loads(where.read_text())
        tensors = {
            key: TensorStorageMetadata(
                TensorProperties(dtype=_DTYPES[t["dtype"]]),
                torch.Size(t["size"]),
                [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in t["chunks"]],
            )
            for key, t in raw["tensors"].items()
        }
        storage = {}
        for fqn, offset, index, rel, start, length in raw["storage"]:
            if Path(rel).name != rel or rel.startswith("."):
                raise ValueError(f"storage file {rel!r} is outside the checkpoint dir")
            idx = MetadataIndex(str(fqn), offset, None if index is None else int(index))
            storage[idx] = _StorageInfo(rel, int(start), int(length))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise StropError(
            f"{where}: not a checkpoint index strop wrote ({_first_line(exc)})"
        ) from None
    md = Metadata(
        state_dict_metadata=tensors,
        planner_data={k: (k,) for k in tensors},
        storage_data=storage,
        version=raw.get("version"),
    )
    md.storage_meta = StorageMeta()
    return md


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _local_bytes(tensors: dict[str, torch.Tensor]) -> int:
    local = (t.to_local() if hasattr(t, "to_local") else t for t in tensors.values())
    return sum(t.numel() * t.element_size() for t in local)


# ---- save / find / load ---------------------------------------------------------------------


def save_checkpoint(
    root: Path, step: int, module, optimizer, trainer_state: dict, keep_last: int
) -> Path:
    """Save step ``step`` under ``root`` (every rank calls this). Returns the committed dir."""
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_OPTIONS)
    tensors: dict[str, torch.Tensor] = {}
    tree = split_tensors({"model": model_sd, "optim": optim_sd}, tensors)
    needed = _local_bytes(tensors) + (1 << 16)
    try:
        tree_of_tensors = tensor_tree({"model": model_sd, "optim": optim_sd})
        dcp.save(tree_of_tensors, storage_writer=_JsonIndexWriter(tmp))
        torch.save(rng_state(), tmp / f"rng-rank{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            (tmp / STATE).write_text(json.dumps(tree))
            (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
            (tmp / MARKER).write_text(str(step))
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        err = disk_full(exc, final, needed)
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if err is None:
            raise
        previous = committed(root)
        kept = f"; {previous[-1]} is intact" if previous else ""
        raise StropRuntimeError(f"checkpoint at step {step}: {err}{kept}") from None
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        prune(root, keep_last)
    _barrier()
    return final


def committed(root: Path) -> list[Path]:
    """Committed checkpoints, oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.glob("step-*") if (p / MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(root: Path, keep_last: int) -> None:
    for old in committed(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)


def find_resume(root: Path, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        found = committed(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / MARKER).exists():
        raise StropError(f"train.resume: {resume} is not a committed checkpoint (no {MARKER})")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StropError(f"{path}: missing; the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StropError(f"{path}: not valid JSON ({_first_line(exc)})") from None


def load_checkpoint(path: Path, module, optimizer) -> dict:
    """Restore weights, optimizer and this rank's RNG; return the trainer state."""
    tree = _read_json(path / STATE)
    trainer = _read_json(path / "trainer.json")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("step"), int):
        raise StropError(f"{path / 'trainer.json'}: not a trainer state (no integer 'step')")
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_OPTIONS)
    template: dict[str, torch.Tensor] = {}
    split_tensors({"model": model_sd, "optim": optim_sd}, template)
    saved = set(_tensor_keys(tree))
    lacking = sorted(set(template) - saved)
    if lacking:
        raise StropError(
            f"{path}: the checkpoint lacks {lacking[0]!r}, which this run trains "
            "(was the model or method changed since it was saved?)"
        )
    wanted = {k: template[k] for k in saved if k in template}
    state = join_tensors(tree, wanted, path)  # refuses a tensor the template lacks
    index = read_index(path)
    absent = sorted(set(wanted) - set(index.state_dict_metadata))
    if absent:
        raise StropError(
            f"{path / INDEX}: lists no tensor {absent[0]!r}; the checkpoint is damaged"
        )
    try:
        dcp.load(wanted, storage_reader=JsonIndexReader(path))  # in place, into ``state``
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise StropError(
            f"{path}: cannot read the checkpoint's tensors ({_first_line(exc)})"
        ) from None
    set_state_dict(
        module,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_LOAD_OPTIONS,
    )
    rng_file = path / f"rng-rank{_rank()}.pt"
    if rng_file.exists():
        _restore_rng(rng_file)
    else:  # resuming with more ranks than were saved: distinct, reproducible streams per rank
        seed = trainer["step"] * 1_000_003 + _rank()
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
    return trainer
