"""Launch `strop train` under torchrun (or as one plain process) and read what it leaves."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
STROP = ["-m", "strop.cli", "train"]

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()


def write_chat_data(path: Path, n: int = 16, seed: int = 0) -> Path:
    """Short chat conversations of ragged length (so padding differs between batchings)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            q = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
            msgs = [{"role": "user", "content": f"{i}: {q}"}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def write_config(path: Path, data: Path, **train) -> Path:
    lines = [
        "model: {name: tiny-llama, dtype: fp32}",
        "stage: sft",
        "method: {name: full}",
        "data:",
        f"  train: {data}",
        "  eval: null",
        "  max_length: 256",
        "  packing: false",
        "train:",
    ]
    base = {
        "max_steps": 4,
        "lr": 1.0e-3,
        "schedule": "constant",
        "warmup": 0,
        "log_every": 1,
        "save_every": 0,
        "precision": "fp32",
        "seed": 7,
        "progress": "false",
        "tensorboard": "false",
    }
    base.update(train)
    lines += [f"  {k}: {v}" for k, v in base.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    # Two ranks share two cores: one thread each keeps them from fighting (and is deterministic).
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run_train(config: Path, overrides: list[str], nproc: int = 1, timeout: int = 240):
    """`strop train` with ``nproc`` processes (torchrun when > 1); raises with output on failure."""
    if nproc > 1:
        cmd = [*TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
        cmd += [*STROP, str(config), *overrides]
    else:
        cmd = [sys.executable, *STROP, str(config), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [r for r in rows if "loss" in r]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "final"
    name = "adapter_model.safetensors" if (final / "adapter_config.json").exists() else None
    if name is None:
        name = "model.safetensors"
    return load_file(str(final / name))


def assert_losses_close(a: list[dict], b: list[dict], rtol: float = 1e-5) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["loss"] - rb["loss"]) <= rtol * abs(rb["loss"]), (ra, rb)
        assert ra["tokens"] == rb["tokens"], (ra, rb)


def assert_weights_close(a: dict, b: dict, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")
