"""Class 1, continued: a full disk (small tmpfs mounts) under train, merge and prepare."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from .fixtures import WORDS, chat_rows, jsonl, train_config, write_yaml
from .rundirs import compare_dirs, leftovers, one_sentence, uncommitted
from .runner import Launcher, Proc


def try_mount(where: Path, size: int) -> str:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def mount_works(work: Path) -> str:
    probe = work / "mount-probe"
    why = try_mount(probe, 1 << 20)
    if not why:
        umount(probe)
    return why


def _no_space(p: Proc) -> list[str]:
    ok, lines = one_sentence(p.err)
    problems = []
    if p.rc != 1:
        problems.append(f"exit {p.rc}, expected 1")
    if not ok or "no space left on device" not in lines[0]:
        problems.append(f"stderr is not one 'no space left on device' sentence: {p.err[-400:]!r}")
    return problems


def disk_full(L: Launcher, d: Path, mount_why: str, quick: bool) -> list[dict]:
    cases = ["final/", "checkpoint (then more room and a resume)", "merge output", "prepare output"]
    if mount_why:
        return [
            {
                "class": "disk full",
                "what": c,
                "tried": False,
                "survived": False,
                "problems": [f"not tried: cannot mount a tmpfs here ({mount_why})"],
            }
            for c in cases
        ]
    items = []
    jsonl(d / "data.jsonl", chat_rows(16, seed=2))
    mounts: list[Path] = []
    try:
        # final/ that does not fit: a full fine-tune's model (~450 KB) into a 300 KB run dir
        write_yaml(
            d / "full.yaml", train_config("small/run", "data.jsonl", "sft", train={"max_steps": 2})
        )
        why = try_mount(d / "small", 300_000)
        mounts.append(d / "small")
        p = L.run(["train", "full.yaml"], d, d / "logs" / "final")
        problems = _no_space(p) if not why else [why]
        run = d / "small" / "run"
        if (run / "final").exists():
            problems.append(f"final/ exists: {sorted(x.name for x in (run / 'final').iterdir())}")
        if left := leftovers(run):
            problems.append(f"left behind: {left}")
        items.append(
            {
                "class": "disk full",
                "what": "final/ does not fit (300 KB tmpfs)",
                "tried": True,
                "exit": p.rc,
                "stderr": one_sentence(p.err)[1][:1],
                "survived": not problems,
                "problems": problems,
            }
        )
        # a checkpoint that does not fit; then the user makes room and reruns: it resumes
        cfg = train_config(
            "ckpt-run", "data.jsonl", "sft", train={"max_steps": 4, "save_every": 1, "keep_last": 1}
        )
        write_yaml(d / "ckpt.yaml", cfg)
        write_yaml(
            d / "ckpt-ref.yaml", {**cfg, "train": {**cfg["train"], "output_dir": "ckpt-ref"}}
        )
        ref = L.run(["train", "ckpt-ref.yaml"], d, d / "logs" / "ckpt-ref")
        (d / "ckpt-run").mkdir()
        why = try_mount(d / "ckpt-run" / "checkpoints", 2_200_000)
        mounts.append(d / "ckpt-run" / "checkpoints")
        p = L.run(["train", "ckpt.yaml"], d, d / "logs" / "ckpt")
        problems = _no_space(p) if not why else [why]
        root = d / "ckpt-run" / "checkpoints"
        kept = sorted(x.name for x in root.glob("step-*") if (x / "COMMITTED").exists())
        if kept != ["step-1"]:
            problems.append(f"committed checkpoints after the failure: {kept}, expected [step-1]")
        if bad := uncommitted(d / "ckpt-run"):
            problems.append(f"half-written checkpoints: {bad}")
        if left := leftovers(d / "ckpt-run"):
            problems.append(f"left behind: {left}")
        if (d / "ckpt-run" / "final").exists():
            problems.append("final/ exists after a failed run")
        first_err = one_sentence(p.err)[1][:1]
        subprocess.run(["mount", "-o", "remount,size=64m", str(root)], capture_output=True)
        p2 = L.run(["train", "ckpt.yaml"], d, d / "logs" / "ckpt-resume")
        if p2.rc != 0 or "resumed from" not in p2.out:
            problems.append(f"rerun after making room: exit {p2.rc}, {p2.err[-300:]!r}")
        elif ref.rc == 0:
            same = compare_dirs(d / "ckpt-ref" / "final", d / "ckpt-run" / "final")
            if not same["equivalent"]:
                problems.append(
                    f"resumed final/ differs from an uninterrupted run: {same['differ']}"
                )
        items.append(
            {
                "class": "disk full",
                "what": "a checkpoint does not fit (2.2 MB tmpfs), "
                "then room is made and the same command reruns",
                "tried": True,
                "exit": [p.rc, p2.rc],
                "stderr": first_err,
                "survived": not problems,
                "problems": problems,
            }
        )
        # a merge output that does not fit
        if ref.rc == 0:
            from strop.hub import resolve_model

            base = str(resolve_model("tiny-llama"))
            write_yaml(
                d / "merge.yaml",
                {
                    "method": "linear",
                    "models": [base, str(d / "ckpt-ref" / "final")],
                    "output": {"dir": "mout/merged"},
                },
            )
            why = try_mount(d / "mout", 300_000)
            mounts.append(d / "mout")
            p = L.run(["merge", "merge.yaml"], d, d / "logs" / "merge")
            problems = _no_space(p) if not why else [why]
            if (d / "mout" / "merged").exists():
                problems.append(
                    f"output exists: {sorted(x.name for x in (d / 'mout/merged').iterdir())}"
                )
            if left := [x.name for x in (d / "mout").iterdir()]:
                problems.append(f"left behind in the output's parent: {left}")
            items.append(
                {
                    "class": "disk full",
                    "what": "merge output does not fit (300 KB tmpfs)",
                    "tried": True,
                    "exit": p.rc,
                    "stderr": one_sentence(p.err)[1][:1],
                    "survived": not problems,
                    "problems": problems,
                }
            )
        # a prepare output that does not fit
        rng = random.Random(5)
        jsonl(
            d / "big.jsonl",
            [
                {"text": " ".join(rng.choice(WORDS) for _ in range(200)) + f" {i}"}
                for i in range(400)
            ],
        )
        write_yaml(
            d / "prep.yaml",
            {"inputs": ["big.jsonl"], "output": {"dir": "pout/clean"}, "steps": ["normalise"]},
        )
        why = try_mount(d / "pout", 100_000)
        mounts.append(d / "pout")
        p = L.run(["prepare", "prep.yaml"], d, d / "logs" / "prepare")
        problems = _no_space(p) if not why else [why]
        out = d / "pout" / "clean"
        if out.exists():
            problems.append(f"output dir left: {sorted(x.name for x in out.iterdir())}")
        items.append(
            {
                "class": "disk full",
                "what": "prepare output does not fit (100 KB tmpfs)",
                "tried": True,
                "exit": p.rc,
                "stderr": one_sentence(p.err)[1][:1],
                "survived": not problems,
                "problems": problems,
            }
        )
    finally:
        for m in reversed(mounts):
            umount(m)
    return items
