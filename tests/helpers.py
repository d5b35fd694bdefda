"""Small deterministic data for tests: short chats and texts so tiny models train in ms."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "kilo",
    "lima",
    "tango",
    "zulu",
    "red",
    "green",
    "blue",
    "one",
    "two",
    "three",
]


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_chat_jsonl(
    path: Path, n: int = 24, seed: int = 0, turns: tuple[int, int] = (1, 2)
) -> Path:
    """Ragged multi-turn conversations in OpenAI messages format."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            messages = []
            if rng.random() < 0.3:
                messages.append({"role": "system", "content": _sentence(rng, 2, 5)})
            for _ in range(rng.randint(*turns)):
                messages.append({"role": "user", "content": _sentence(rng, 2, 12)})
                messages.append({"role": "assistant", "content": _sentence(rng, 1, 10)})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_text_jsonl(path: Path, n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": _sentence(rng, 5, 40)}) + "\n")
    return path


def write_preference_jsonl(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Pairs with an explicit prompt; chosen answers repeat 'alpha', rejected ones 'zulu', so a
    preference is learnable. Some prompts are multi-turn, some carry a margin."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            prompt = [{"role": "user", "content": _sentence(rng, 2, 10)}]
            if rng.random() < 0.3:
                prompt += [
                    {"role": "assistant", "content": _sentence(rng, 1, 6)},
                    {"role": "user", "content": _sentence(rng, 2, 8)},
                ]
            row = {
                "prompt": prompt,
                "chosen": "alpha " + _sentence(rng, 1, 6 + i % 5),
                "rejected": "zulu " + _sentence(rng, 1, 4),
            }
            if rng.random() < 0.5:
                row["margin"] = round(rng.random(), 3)
            f.write(json.dumps(row) + "\n")
    return path


def write_kto_jsonl(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Unpaired completions labelled desirable ('alpha ...') or not ('zulu ...')."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            good = i % 3 != 0
            completion = ("alpha " if good else "zulu ") + _sentence(rng, 1, 6)
            row = {"prompt": _sentence(rng, 2, 10), "completion": completion, "label": good}
            f.write(json.dumps(row) + "\n")
    return path


def tiny_config(out: Path, data_path: Path, **sections) -> dict:
    """A raw config dict for a fast fp32 run on tiny-llama; ``sections`` update each section."""
    cfg = {
        "model": {"name": "tiny-llama"},
        "stage": "sft",
        "method": {"name": "full"},
        "data": {"train": str(data_path), "eval": None, "max_length": 256, "packing": False},
        "train": {
            "output_dir": str(out),
            "max_steps": 4,
            "batch_size": 4,
            "lr": 1e-3,
            "warmup": 0,
            "log_every": 1,
            "eval_every": 0,
            "save_every": 0,
            "progress": False,
            "tensorboard": False,
            "precision": "fp32",
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


def cpu_kind() -> str:
    """The instruction set the CPU kernels run with: amx, avx512 or avx2. fp32 sums are
    reassociated differently per kind, and a trajectory amplifies that over its steps."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return "amx" if "amx_tile" in flags else "avx512" if "avx512f" in flags else "avx2"


def check_golden(
    name: str,
    got: list[dict],
    keys: tuple[str, ...],
    rel: float = 1e-5,
) -> None:
    """Compare a trajectory with tests/golden/<name>.json (``tokens`` exactly, ``keys`` to
    ``rel``), or with tests/golden/<cpu kind>/<name>.json where the trajectory was recorded on
    that kind of CPU too; STROP_REGEN_GOLDEN=1 rewrites the file in use instead (say why in
    the commit)."""
    import os

    import pytest

    root = Path(__file__).parent / "golden"
    path = root / cpu_kind() / f"{name}.json"
    if not path.exists():
        path = root / f"{name}.json"
    if os.environ.get("STROP_REGEN_GOLDEN"):
        path.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(path.read_text())
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["tokens"] == w["tokens"], g["step"]
        for k in keys:
            assert g[k] == pytest.approx(w[k], rel=rel, abs=1e-7), (g["step"], k)


def strop_error(args: list[str], code: int, timeout: float = 300) -> str:
    """Run the real CLI (``python -m strop.cli *args``), expect exit ``code`` with no
    traceback, and return its one ``strop: error:`` line."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "strop.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    return next(x for x in done.stderr.splitlines() if x.startswith("strop: error: "))


def eval_model(name: str, method: dict | None = None, bf16: bool = False):
    """(model in eval mode, tokenizer): a tiny model seeded 0, with ``method`` applied (a
    LoRA's B drawn from N(0, 0.05): a trained adapter, not the B = 0 start); ``bf16``: frozen
    linear weights cast to bf16, as training under autocast holds them."""
    import torch

    from strop.models.load import frozen_linears_to, load_model
    from strop.models.transforms import parse_method

    torch.manual_seed(0)
    model, tok, _ = load_model(name, "fp32")
    if method:
        transform, params = parse_method(method)
        model = transform.apply(model, params)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    if bf16:
        frozen_linears_to(model, torch.bfloat16)
    return model.eval(), tok
