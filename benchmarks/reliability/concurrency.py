"""Class 1, continued: concurrent writers on one output_dir; reruns of a finished run."""

from __future__ import annotations

import time
from pathlib import Path

from .fixtures import chat_rows, jsonl, train_config, write_yaml
from .rundirs import compare_dirs, metric_rows, one_sentence
from .runner import Launcher


def _writer_pair(
    L: Launcher, d: Path, name: str, delay: float, second_overrides: list[str], ref: Path
) -> dict:
    a = L.start(["train", "conc.yaml", f"train.output_dir={name}"], d, d / "logs" / f"{name}-a")
    time.sleep(delay)
    a_running = a.poll() is None
    b = L.start(
        ["train", "conc.yaml", f"train.output_dir={name}", *second_overrides],
        d,
        d / "logs" / f"{name}-b",
    )
    a.wait()
    b.wait()
    problems = []
    (win, lose) = (a, b) if a.rc == 0 else (b, a)
    if sorted([a.rc, b.rc], key=str) != [0, 2]:
        problems.append(f"exits {a.rc} and {b.rc}, expected one 0 and one 2")
    ok, lines = one_sentence(lose.err)
    want = f"(PID {win.pid})"
    if not ok or want not in (lines[0] if lines else ""):
        problems.append(
            f"the refused run's stderr does not name {want} in one sentence: {lose.err[-300:]!r}"
        )
    if delay and not a_running:
        problems.append("the first run had already finished when the second started")
    same = compare_dirs(ref / "final", d / name / "final")
    if not same["equivalent"]:
        problems.append(
            f"the survivor's final/ differs from an uninterrupted run: {same['differ']}"
        )
    if metric_rows(ref) != metric_rows(d / name):
        problems.append("the survivor's metrics.jsonl differs from an uninterrupted run's")
    how = "together" if not delay else f"{delay:g} s apart"
    diff = f" (second with {' '.join(second_overrides)})" if second_overrides else ""
    return {
        "class": "concurrent writers",
        "stage": "sft",
        "what": f"two `strop train` on one output_dir, {how}{diff}",
        "exit": [a.rc, b.rc],
        "refused_stderr": lines[:1],
        "survived": not problems,
        "problems": problems,
    }


def concurrency(L: Launcher, d: Path, quick: bool) -> list[dict]:
    jsonl(d / "data.jsonl", chat_rows(24, seed=1))
    cfg = train_config(
        "ref",
        "data.jsonl",
        "sft",
        method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        train={"max_steps": 16, "batch_size": 2, "save_every": 2, "keep_last": 2},
    )
    write_yaml(d / "conc.yaml", cfg)
    ref = L.run(["train", "conc.yaml"], d, d / "logs" / "ref")
    if ref.rc != 0:
        return [
            {
                "class": "concurrent writers",
                "what": "reference run",
                "survived": False,
                "problems": [f"exit {ref.rc}: {ref.err[-400:]}"],
            }
        ]
    items = [_writer_pair(L, d, "together", 0, [], d / "ref")]
    if not quick:
        items.append(_writer_pair(L, d, "apart-same", 3, [], d / "ref"))
    items.append(_writer_pair(L, d, "apart-changed", 3, ["method.r=8", "train.lr=5e-3"], d / "ref"))
    # Reruns over the finished run: a changed model or changed data is refused naming it, and
    # nothing is overwritten first; a harmless change (more steps) resumes.
    run = d / "apart-changed"
    before = {n: (run / n).read_bytes() for n in ("config.yaml", "metrics.jsonl")}
    reruns = [(["method.r=8"], 2, "method.r"), (["train.lr=3e-3"], 2, "train.lr")]
    if not quick:
        reruns.append((["model.name=tiny-qwen2"], 2, "model.name"))
    for overrides, want_rc, names in reruns:
        p = L.run(
            ["train", "conc.yaml", "train.output_dir=apart-changed", *overrides],
            d,
            d / "logs" / f"rerun-{overrides[0]}",
        )
        ok, lines = one_sentence(p.err)
        problems = []
        if p.rc != want_rc or not ok or names not in lines[0]:
            problems.append(f"exit {p.rc}, stderr {p.err[-300:]!r}")
        now = {n: (run / n).read_bytes() for n in before}
        if now != before:
            problems.append("config.yaml or metrics.jsonl changed before the refusal")
        items.append(
            {
                "class": "reruns of a finished run",
                "stage": "sft",
                "what": f"rerun with {' '.join(overrides)}",
                "exit": p.rc,
                "stderr": lines[:1],
                "survived": not problems,
                "problems": problems,
            }
        )
    # other training data: another file, then the same file with one word changed
    jsonl(d / "data-other.jsonl", chat_rows(24, seed=7))
    p0 = L.run(
        ["train", "conc.yaml", "train.output_dir=apart-changed", "data.train=data-other.jsonl"],
        d,
        d / "logs" / "rerun-other-data",
    )
    problems = []
    ok, lines = one_sentence(p0.err)
    if p0.rc != 2 or not ok or "data.train" not in lines[0]:
        problems.append(f"another data file: exit {p0.rc}, stderr {p0.err[-300:]!r}")
    original = (d / "data.jsonl").read_bytes()
    (d / "data.jsonl").write_bytes(original.replace(b"alpha", b"omega", 1))
    try:
        p1 = L.run(
            ["train", "conc.yaml", "train.output_dir=apart-changed"],
            d,
            d / "logs" / "rerun-edited-data",
        )
    finally:
        (d / "data.jsonl").write_bytes(original)
    ok1, lines1 = one_sentence(p1.err)
    if p1.rc != 2 or not ok1 or "changed since" not in lines1[0]:
        problems.append(f"the same file edited: exit {p1.rc}, stderr {p1.err[-300:]!r}")
    if {n: (run / n).read_bytes() for n in before} != before:
        problems.append("config.yaml or metrics.jsonl changed before the refusal")
    items.append(
        {
            "class": "reruns of a finished run",
            "stage": "sft",
            "what": "rerun with other training data (another file; the same file edited)",
            "exit": [p0.rc, p1.rc],
            "stderr": lines[:1] + lines1[:1],
            "survived": not problems,
            "problems": problems,
        }
    )
    p = L.run(
        ["train", "conc.yaml", "train.output_dir=apart-changed", "train.max_steps=18"],
        d,
        d / "logs" / "rerun-more",
    )
    steps = [r.get("step") for r in metric_rows(run) if "loss" in r]
    problems = []
    if p.rc != 0 or "resumed from" not in p.out or steps != list(range(1, 19)):
        problems.append(f"exit {p.rc}, steps logged {steps}, stderr {p.err[-300:]!r}")
    items.append(
        {
            "class": "reruns of a finished run",
            "stage": "sft",
            "what": "rerun with train.max_steps raised (harmless: must resume)",
            "exit": p.rc,
            "survived": not problems,
            "problems": problems,
        }
    )
    return items
