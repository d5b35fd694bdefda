"""Atomic, resumable checkpoints that a different world size can load.

Layout: ``checkpoints/step-N/`` holds a torch.distributed.checkpoint (DCP) of the trainable
weights and optimizer state (resharded on load, so 2 processes can resume 1 and vice versa),
``trainer.json`` (step, data position, counters) and ``rng-rank{r}.pt``. It is written under
``.tmp-step-N`` and renamed once complete; only a dir holding the ``COMMITTED`` marker counts.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from strop.errors import StropError

MARKER = "COMMITTED"
# DCP warns on every single-process save/load that no process group exists; that is intended.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# Frozen weights come from the base model on load, so they are absent from the checkpoint.
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    torch.save(rng_state(), tmp / f"rng-rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
        (tmp / MARKER).write_text(str(step))
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


def load_checkpoint(path: Path, module, optimizer) -> dict:
    """Restore weights, optimizer and this rank's RNG; return the trainer state."""
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        module,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_LOAD_OPTIONS,
    )
    rng_file = path / f"rng-rank{_rank()}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:  # resuming with more ranks than were saved: distinct, reproducible streams per rank
        seed = int((path / MARKER).read_text() or 0) * 1_000_003 + _rank()
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
    return json.loads((path / "trainer.json").read_text())
