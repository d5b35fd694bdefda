"""Launch `strop train` under torchrun (or as one plain process) and read what it leaves.

Run as a script (``torchrun ... dist_helpers.py train CONFIG ...``) it is `strop` itself plus an
audit hook that records, per rank, every file or directory the process creates, writes,
renames or removes under the run directory: the tests use it to prove that only rank 0 writes
the run's artifacts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

STROP = ["-m", "strop.cli", "train"]
AUDIT_ENV = "STROP_TEST_AUDIT"  # "<run dir>|<dir for rank{r}.json>"

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
]


def write_chat_data(path: Path, n: int = 16, seed: int = 0, system: str | None = None) -> Path:
    """Short chat conversations of ragged length (so padding differs between batchings);
    ``system``: the same system message opens every conversation."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            q = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
            msgs = [{"role": "user", "content": f"{i}: {q}"}, {"role": "assistant", "content": a}]
            if system:
                msgs.insert(0, {"role": "system", "content": system})
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def write_config(
    path: Path, data: Path, method: str = "{name: full}", eval_data: Path | None = None, **train
) -> Path:
    """fp32, constant lr, dropout-free tiny-llama SFT: deterministic on any number of ranks."""
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
    lines = [
        "model: {name: tiny-llama, dtype: fp32}",
        "stage: sft",
        f"method: {method}",
        "data:",
        f"  train: {data}",
        f"  eval: {eval_data or 'null'}",
        "  max_length: 256",
        "  packing: false",
        "train:",
        *(f"  {k}: {v}" for k, v in base.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    # Two ranks share two cores: one thread each keeps them from fighting over them.
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively (torchrun starts its workers in their own sessions)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def torchrun(nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
    ]


def launch(cmd: list[str], env_extra: dict | None = None, timeout: float = 180):
    """Run ``cmd``; on a hang kill it and every process it started. -> (returncode, out, err)"""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env_extra)
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return None, stdout, stderr
    return proc.returncode, stdout, stderr


def run_train(config: Path, overrides: list[str], nproc: int = 1, audit: Path | None = None):
    """`strop train` with ``nproc`` processes (torchrun when > 1); raises, with the output, on
    failure or a hang. ``audit``: record each rank's writes under the run dir there."""
    if nproc > 1:
        cmd = [*torchrun(nproc), *([__file__] if audit else STROP[:2]), "train"]
    else:
        cmd = [sys.executable, *STROP]
    cmd += [str(config), *overrides]
    extra = {}
    if audit:
        out_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("train.output_dir="))
        audit.mkdir(parents=True, exist_ok=True)
        extra[AUDIT_ENV] = f"{Path(out_dir).resolve()}|{audit}"
    code, stdout, stderr = launch(cmd, extra)
    if code != 0:
        raise AssertionError(
            f"{' '.join(cmd)} {'hung' if code is None else f'exited {code}'}"
            f"\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-6000:]}"
        )
    return stdout, stderr


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [r for r in rows if "loss" in r]


def eval_loss(run_dir: Path) -> float:
    """The end-of-run eval loss (mean over the eval set's target tokens, all ranks)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return [r["eval_loss"] for r in rows if "eval_loss" in r][-1]


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    final = run_dir / "final"
    is_adapter = (final / "adapter_config.json").exists()
    name = "adapter_model" if is_adapter else "model"
    return load_file(str(final / f"{name}.safetensors"))


def assert_steps_close(a: list[dict], b: list[dict], rtol: float = 1e-5) -> None:
    """Same steps, same target-token counts, loss and grad norm equal to ``rtol``."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["tokens"] == rb["tokens"], (ra, rb)
        for key in ("loss", "grad_norm"):
            assert abs(ra[key] - rb[key]) <= rtol * abs(rb[key]), (key, ra, rb)


def assert_weights_close(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def read_audit(audit: Path) -> dict[int, set[str]]:
    """rank -> paths (relative to the run dir) that rank created, wrote, moved or removed."""
    return {
        int(p.stem.removeprefix("rank")): set(json.loads(p.read_text()))
        for p in audit.glob("rank*.json")
    }


def _install_audit(run_dir: str, out_dir: str) -> None:
    import atexit

    touched: set[str] = set()
    root = run_dir.rstrip("/") + "/"
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    events = {"os.mkdir", "os.rename", "os.replace", "os.remove", "shutil.rmtree", "os.rmdir"}

    def note(path) -> None:
        if isinstance(path, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(path))
            if path.startswith(root):
                touched.add(path[len(root) :])

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) == 3:
            path, mode, flags = args
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (flags or 0) & writing:
                note(path)
        elif event in events:
            note(args[0])
            if event in {"os.rename", "os.replace"}:
                note(args[1])

    def dump() -> None:
        rank = os.environ.get("RANK", "0")
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(sorted(touched)))

    atexit.register(dump)
    sys.addaudithook(hook)


if __name__ == "__main__":  # torchrun ... dist_helpers.py train CONFIG [overrides]
    if AUDIT_ENV in os.environ:
        _install_audit(*os.environ[AUDIT_ENV].split("|"))
    from strop.cli import main

    sys.argv[0] = "strop"
    main()
