"""Class 1: kill -9 and SIGTERM at seeded steps of sft, dpo and grpo runs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .concurrency import concurrency
from .disk_full import disk_full
from .fixtures import (
    REWARD_MODULE,
    chat_rows,
    jsonl,
    pref_rows,
    prompt_rows,
    train_config,
    write_yaml,
)
from .interrupts import quickstart_interrupts
from .rundirs import compare_dirs, leftovers, metric_rows, one_sentence, uncommitted
from .runner import Launcher, Proc, _read


@dataclass
class Fault:
    stage: str
    sig: str  # SIGKILL | SIGTERM
    where: str  # step | checkpoint | final
    at: int = 0  # the step after which (step) / from which (checkpoint) the fault fires
    fired: bool = False
    landed: str = ""
    exit: int | str | None = None
    problems: list[str] = field(default_factory=list)
    survived: bool = False

    @property
    def label(self) -> str:
        where = {
            "step": f"after step {self.at}",
            "checkpoint": f"writing a checkpoint (>= step {self.at})",
            "final": "writing final/",
        }[self.where]
        return f"{self.sig} {where}"


STAGES = {
    # stage: (steps, data writer, extra sections)
    "sft": (12, lambda p: jsonl(p, chat_rows(16)), {}),
    "dpo": (10, lambda p: jsonl(p, pref_rows(16)), {}),
    "grpo": (
        8,
        lambda p: jsonl(p, prompt_rows(16)),
        {
            "grpo": {
                "group_size": 4,
                "max_new_tokens": 12,
                "beta": 0.05,
                "num_iterations": 2,
                "rewards": ["probe_rewards:letter_share"],
            },
        },
    ),
}


def _stage_config(stage: str, out: str) -> dict:
    steps, _, extra = STAGES[stage]
    return train_config(
        out,
        "data.jsonl",
        stage,
        method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},  # dropout: RNG state matters
        train={
            "max_steps": steps,
            "batch_size": 2,
            "save_every": 1,
            "keep_last": 2,
            "warmup": 2,
            "lr": 1e-2 if stage == "grpo" else 1e-3,
        },
        **extra,
    )


def _plan(stage: str, rng: random.Random, quick: bool) -> list[Fault]:
    """Faults in the order they hit one run dir: step/checkpoint faults at increasing steps
    (two apart, so that a row logged before a kill is never mistaken for the next trigger),
    then two while final/ is written."""
    steps = STAGES[stage][0]
    n_mid = 2 if quick else (5 if steps >= 10 else 4)
    slots = list(range(1, steps - 1, 2))
    ats = sorted(rng.sample(slots, min(n_mid, len(slots))))
    wheres = ["checkpoint"] * (1 if quick else 2) + ["step"] * max(
        0, len(ats) - (1 if quick else 2)
    )
    rng.shuffle(wheres)
    sigs = ["SIGKILL", "SIGTERM"] * len(ats)
    rng.shuffle(sigs)
    faults = [Fault(stage, s, w, a) for s, w, a in zip(sigs, wheres, ats, strict=False)]
    if (
        not {f.sig for f in faults if f.where == "checkpoint"} >= {"SIGKILL", "SIGTERM"}
        and not quick
    ):
        ckpt_faults = [f for f in faults if f.where == "checkpoint"]
        for f, s in zip(ckpt_faults, ["SIGKILL", "SIGTERM"], strict=False):
            f.sig = s
    faults.append(Fault(stage, "SIGKILL", "final"))
    if not quick:
        faults.append(Fault(stage, "SIGTERM", "final"))
    return faults


def _fire_when(p: Proc, run: Path, fault: Fault, timeout: float = 600) -> bool:
    """Poll until the fault's moment, send the signal; False if the run ended first."""
    end = time.monotonic() + timeout
    ckpts, metrics = run / "checkpoints", run / "metrics.jsonl"
    sig = getattr(signal, fault.sig)
    while p.poll() is None and time.monotonic() < end:
        if fault.where == "step":
            text = _read(metrics)
            done = [json.loads(x)["step"] for x in text.splitlines() if x.endswith("}")]
            if done and max(done) >= fault.at:
                p.kill(sig)
                fault.landed = f"after step {fault.at} was logged"
                return True
            time.sleep(0.01)
        elif fault.where == "checkpoint":
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(ckpts):
                    if name.startswith(".tmp-step-") and int(name.rsplit("-", 1)[1]) >= fault.at:
                        p.kill(sig)
                        fault.landed = name
                        return True
            time.sleep(0.001)
        else:
            if (run / ".final.tmp").exists():
                p.kill(sig)
                fault.landed = ".final.tmp"
                return True
            time.sleep(0.001)
    return False


def _check_after_fault(p: Proc, run: Path, ref: Path, fault: Fault) -> None:
    rc = p.rc
    fault.exit = rc
    if fault.where == "checkpoint" and fault.sig == "SIGKILL":
        tmp = run / "checkpoints" / fault.landed
        fault.landed = (
            f"mid-write ({fault.landed} left)"
            if tmp.exists()
            else (f"just after {fault.landed} was committed")
        )
    if fault.where == "final":
        fault.landed = (
            "mid-write (.final.tmp left, no final/)"
            if (run / ".final.tmp").exists() and not (run / "final").exists()
            else "after final/ was complete"
            if (run / "final").exists()
            else "during final/"
        )
    if fault.sig == "SIGKILL" and rc != -signal.SIGKILL:
        fault.problems.append(f"exit {rc}, expected -9")
    if fault.sig == "SIGTERM":
        if fault.where in ("step", "checkpoint"):
            ok, lines = one_sentence(p.err)
            if rc != 128 + signal.SIGTERM:
                fault.problems.append(f"exit {rc}, expected 143 (saved and stopped)")
            elif not ok or "interrupted at step" not in lines[0]:
                fault.problems.append(f"stderr is not one 'interrupted' sentence: {p.err[-300:]!r}")
        elif rc not in (-signal.SIGTERM, 0):
            fault.problems.append(f"exit {rc} on SIGTERM while writing final/")
    if "Traceback" in p.err:
        fault.problems.append("traceback on stderr")
    if bad := uncommitted(run):
        fault.problems.append(f"checkpoint dirs without COMMITTED: {bad}")
    if (run / "final").exists():
        names = sorted(x.name for x in (run / "final").iterdir())
        want = sorted(x.name for x in (ref / "final").iterdir())
        if names != want:
            fault.problems.append(f"half-written final/: {names}")


def faults_class(L: Launcher, work: Path, rng: random.Random, quick: bool, mount_ok: bool) -> dict:
    items: list[dict] = []
    stages = {}
    for stage in STAGES:
        t0 = time.monotonic()
        d = work / "faults" / stage
        STAGES[stage][1](d / "data.jsonl")
        (d / "probe_rewards.py").write_text(REWARD_MODULE)
        write_yaml(d / "ref.yaml", _stage_config(stage, "ref"))
        write_yaml(d / "run.yaml", _stage_config(stage, "run"))
        ref = L.run(["train", "ref.yaml"], d, d / "logs" / "ref", spawn=True)
        if ref.rc != 0:
            items.append(
                {
                    "class": "kill/SIGTERM",
                    "stage": stage,
                    "what": "reference run",
                    "survived": False,
                    "problems": [f"reference exit {ref.rc}: {ref.err[-500:]}"],
                }
            )
            continue
        plan = _plan(stage, rng, quick)
        runs = []
        for i, fault in enumerate(plan):
            p = L.start(["train", "run.yaml"], d, d / "logs" / f"fault{i}")
            fault.fired = _fire_when(p, d / "run", fault)
            p.wait()
            runs.append({"argv": p.argv, "exit": p.rc, "seconds": round(p.seconds, 1)})
            if not fault.fired:
                fault.problems.append(f"the run ended (exit {p.rc}) before the moment came")
                continue
            _check_after_fault(p, d / "run", d / "ref", fault)
        last = L.run(["train", "run.yaml"], d, d / "logs" / "last")
        runs.append({"argv": last.argv, "exit": last.rc, "seconds": round(last.seconds, 1)})
        same = compare_dirs(d / "ref" / "final", d / "run" / "final")
        rows_same = metric_rows(d / "ref") == metric_rows(d / "run")
        left = leftovers(d / "run")
        chain_problems = []
        if last.rc != 0:
            chain_problems.append(f"the completing rerun exited {last.rc}: {last.err[-400:]}")
        if "resumed from" not in last.out:
            chain_problems.append("the completing rerun did not say 'resumed from'")
        if not same["equivalent"]:
            chain_problems.append(f"final/ differs from the uninterrupted run: {same['differ']}")
        if not rows_same:
            chain_problems.append("metrics.jsonl does not read as the uninterrupted run's")
        if left:
            chain_problems.append(f"left behind: {left}")
        for fault in plan:
            fault.survived = fault.fired and not fault.problems and not chain_problems
            items.append(
                {
                    "class": "kill/SIGTERM",
                    "stage": stage,
                    "what": fault.label,
                    "signal": fault.sig,
                    "where": fault.where,
                    "fired": fault.fired,
                    "landed": fault.landed,
                    "exit": fault.exit,
                    "survived": fault.survived,
                    "problems": fault.problems + chain_problems,
                }
            )
        stages[stage] = {
            "final_identical_bytes": same["identical"],
            "final_equivalent": same["equivalent"],
            "json_files_differing_only_in_list_order": same["order_only"],
            "metrics_same_rows": rows_same,
            "runs": runs,
            "seconds": round(time.monotonic() - t0, 1),
        }
        print(
            f"  faults/{stage}: {sum(f.survived for f in plan)}/{len(plan)} survived, "
            f"final/ {'byte-identical' if same['identical'] else same}, "
            f"{time.monotonic() - t0:.0f}s",
            flush=True,
        )
    items += concurrency(L, work / "concurrent", quick)
    items += quickstart_interrupts(work / "quickstart", quick)
    items += disk_full(L, work / "disk", mount_ok, quick)
    return {"items": items, "stages": stages}
