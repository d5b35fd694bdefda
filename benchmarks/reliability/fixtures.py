"""Data and configs a user would write; the payload a planted pickle carries."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

# The same word list and sentences as the test suite's data writers (the repo root is on
# sys.path: benchmarks/reliability/__init__.py puts it there).
from tests.helpers import WORDS, _sentence  # noqa: E402,F401


def jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def chat_rows(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        m = [{"role": "system", "content": _sentence(rng, 2, 5)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 2)):
            m += [
                {"role": "user", "content": _sentence(rng, 2, 12)},
                {"role": "assistant", "content": _sentence(rng, 1, 10)},
            ]
        rows.append({"messages": m})
    return rows


def pref_rows(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": [{"role": "user", "content": _sentence(rng, 2, 10)}],
            "chosen": "alpha " + _sentence(rng, 1, 6 + i % 5),
            "rejected": "zulu " + _sentence(rng, 1, 4),
        }
        for i in range(n)
    ]


def prompt_rows(n: int = 16, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": _sentence(rng, 2, 6), "answer": str(i)} for i in range(n)]


REWARD_MODULE = '''"""A user's own GRPO reward (module:function): the share of lowercase letters."""


def letter_share(prompts, completions, **kw):
    return [sum("a" <= ch <= "z" for ch in c) / max(len(c), 1) for c in completions]
'''


def train_config(output_dir: str, data: str, stage: str = "sft", **sections) -> dict:
    cfg = {
        "model": {"name": "tiny-llama"},
        "stage": stage,
        "method": {"name": "full"},
        "data": {"train": data, "eval": None, "max_length": 128, "packing": False},
        "train": {
            "output_dir": output_dir,
            "max_steps": 1,
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
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_yaml(path: Path, tree) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


class Payload:
    """Unpickling this writes ``path``: what an attacker's file would do, harmlessly."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('code ran')",))
