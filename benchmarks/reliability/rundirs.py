"""Comparing run dirs: final/ files, metrics rows, leftovers, one-sentence errors."""

from __future__ import annotations

import json
from pathlib import Path

from .runner import _read

TIMING_KEYS = ("target_tokens_per_s",)  # and every time/* key: wall-clock, not the run


def _canonical_json(path: Path):
    """A JSON file with its lists of names sorted: PEFT writes target_modules from a set, whose
    order follows Python's per-process string hashing."""

    def norm(x):
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items()}
        if isinstance(x, list) and all(isinstance(v, str) for v in x):
            return sorted(x)
        if isinstance(x, list):
            return [norm(v) for v in x]
        return x

    return norm(json.loads(path.read_text()))


def compare_dirs(a: Path, b: Path) -> dict:
    """{'identical': bool (every file byte for byte), 'equivalent': bool (weights byte for
    byte, JSON equal up to the order of name lists), 'differ': [...], 'order_only': [...]}"""
    fa = sorted(p.name for p in a.iterdir()) if a.is_dir() else []
    fb = sorted(p.name for p in b.iterdir()) if b.is_dir() else []
    differ, order_only = [], []
    if fa != fb or not fa:
        differ.append(f"files {fa} vs {fb}")
    for name in sorted(set(fa) & set(fb)):
        x, y = a / name, b / name
        if x.is_file() and y.is_file() and x.read_bytes() != y.read_bytes():
            if name.endswith(".json") and _canonical_json(x) == _canonical_json(y):
                order_only.append(name)
            else:
                differ.append(name)
    return {
        "identical": not differ and not order_only,
        "equivalent": not differ,
        "differ": differ,
        "order_only": order_only,
    }


def metric_rows(run: Path) -> list[dict]:
    rows = []
    for line in _read(run / "metrics.jsonl").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            rows.append({"unparsable": line})
            continue
        rows.append(
            {k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("time/")}
        )
    return rows


def leftovers(run: Path) -> list[str]:
    found = []
    for d in (run, run / "checkpoints"):
        if d.is_dir():
            found += [
                str(p.relative_to(run))
                for p in d.iterdir()
                if ".tmp" in p.name or p.name.endswith(".old")
            ]
    return sorted(found)


def uncommitted(run: Path) -> list[str]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return [p.name for p in root.glob("step-*") if not (p / "COMMITTED").exists()]


def one_sentence(err: str) -> tuple[bool, list[str]]:
    lines = [x for x in err.splitlines() if x.startswith("strop: ")]
    return ("Traceback (most recent call last)" not in err and len(lines) == 1), lines
