"""Reliability probe (issue 18): strop tried as a hostile user would, class by class.

    .venv/bin/python benchmarks/reliability_probe.py            # the full probe (3-8 min on 2 busy cores)
    .venv/bin/python benchmarks/reliability_probe.py --quick    # a subset of each class (2-5 min)
    .venv/bin/python benchmarks/reliability_probe.py --only inputs --spawn --cases t-out-empty

Classes (each prints a table; the totals and every run's details go to
benchmarks/results/reliability.json, or --json PATH):

1. faults: kill -9 and SIGTERM at seeded random steps of sft, dpo and grpo runs (tiny-llama,
   LoRA with dropout, a checkpoint every step), also while a checkpoint (``.tmp-step-N``) or
   ``final/`` (``.final.tmp``) is being written; the same command is rerun after each fault, and
   the finished run's final/ files are compared byte for byte with an uninterrupted run's.
   Concurrent writers (two `strop train` on one output_dir, together and 3 s apart), reruns of
   a finished run with a changed config or changed data, and a full disk (a small tmpfs, where
   `mount` works: final/, a checkpoint, then more room and a resume; a merge output; a prepare
   output).
2. inputs: a catalogue of user mistakes across train, data inspect, prepare, eval, merge and
   generate, each run through the CLI and classified: a clear sentence (exit 1 or 2, one
   `strop: error:` line naming the file/key/field, no traceback), a traceback, silently
   accepted (exit 0 for an input that must be refused), or other (explained). Rows the design
   quarantines (a few bad rows under data.max_bad_fraction) count as handled when the run
   exits 0, names them with file:line and writes the quarantine file. Published benchmark
   layouts (CMMLU, MMLU, C-Eval) must load.
3. sandbox: every escape of the issue replayed through the code_tests reward (strop.sandbox)
   on each backend that works here, plus the bounds (wall clock, output flood, bombs) and
   pickles planted in files strop reads back; contained = score 0 with the reason recorded
   and the host unaffected.

How runs are launched: every run is the real CLI, ``strop.cli.main()`` with the argv a user
would type, in its own process with its own cwd, stdout and stderr. By default a pre-imported
server process forks one child per run (a fresh interpreter costs ~15 s of imports on this
2-core machine, which would put the probe far over its time budget); ``--spawn`` runs each as
``python -m strop.cli ...`` instead. The uninterrupted reference runs of the faults class are
always spawned, so the comparison also checks that a forked run equals a fresh interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "reliability.json"
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
TIMING_KEYS = ("target_tokens_per_s",)  # and every time/* key: wall-clock, not the run


# =============================================================================================
# Launching the CLI
# =============================================================================================
class Proc:
    """One CLI run: its pid, exit code (None while running; -N for a signal) and output."""

    def __init__(self, pid: int, popen, log: Path, argv: list[str]):
        self.pid, self._popen, self.log, self.argv = pid, popen, log, argv
        self.rc: int | None = None
        self.t0 = time.monotonic()
        self.seconds = 0.0

    def poll(self) -> int | None:
        if self.rc is None:
            if self._popen is not None:
                rc = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                rc = os.waitstatus_to_exitcode(status) if pid else None
            if rc is not None:
                self.rc, self.seconds = rc, time.monotonic() - self.t0
        return self.rc

    def wait(self, timeout: float = 600) -> int:
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                self.kill(signal.SIGKILL)
                while self.poll() is None:
                    time.sleep(0.01)
                self.rc = "timeout"  # type: ignore[assignment]
                break
            time.sleep(0.01)
        return self.rc  # type: ignore[return-value]

    def kill(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    @property
    def out(self) -> str:
        return _read(self.log.with_suffix(".out"))

    @property
    def err(self) -> str:
        return _read(self.log.with_suffix(".err"))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class Launcher:
    """Starts `strop ARGV` in ``cwd``: forked from this pre-imported process, or spawned."""

    def __init__(self, spawn: bool):
        self.spawn = spawn
        self.count = 0
        if not spawn:  # import once what every verb imports lazily (no torch op runs here)
            import strop.cli  # noqa: F401
            import strop.commands.eval  # noqa: F401
            import strop.commands.infer  # noqa: F401
            import strop.commands.inspect  # noqa: F401
            import strop.commands.merge  # noqa: F401
            import strop.commands.prepare  # noqa: F401
            import strop.commands.train  # noqa: F401

    def start(self, argv: list[str], cwd: Path, log: Path, env: dict | None = None,
              spawn: bool | None = None) -> Proc:  # fmt: skip
        self.count += 1
        log.parent.mkdir(parents=True, exist_ok=True)
        env_all = {**os.environ, "NO_COLOR": "1", **(env or {})}
        env_all.pop("STROP_DEBUG", None)
        out, err = log.with_suffix(".out"), log.with_suffix(".err")
        if self.spawn if spawn is None else spawn:
            with open(out, "w") as fo, open(err, "w") as fe:
                p = subprocess.Popen([sys.executable, "-m", "strop.cli", *argv], cwd=cwd,
                                     env=env_all, stdout=fo, stderr=fe,
                                     stdin=subprocess.DEVNULL)  # fmt: skip
            return Proc(p.pid, p, log, argv)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: become `python -m strop.cli ARGV` in cwd
            code = 1
            try:
                for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE):
                    signal.signal(s, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                fds = [os.open(os.devnull, os.O_RDONLY),
                       os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                       os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)]  # fmt: skip
                for i, fd in enumerate(fds):
                    os.dup2(fd, i)
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env_all)
                sys.path.insert(0, str(cwd))  # as `python -m` does: the cwd's modules import
                sys.argv = ["strop", *argv]
                import strop.cli

                try:
                    strop.cli.main()
                    code = 0
                except SystemExit as e:  # what the interpreter would make of it
                    if e.code is None or isinstance(e.code, int):
                        code = e.code or 0
                    else:
                        print(e.code, file=sys.stderr)
                        code = 1
                except BaseException:  # noqa: BLE001 - an uncaught exception, as Python prints it
                    traceback.print_exc()
                    code = 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        return Proc(pid, None, log, argv)

    def run(self, argv, cwd, log, env=None, timeout=600, spawn=None) -> Proc:
        p = self.start(argv, cwd, log, env, spawn)
        p.wait(timeout)
        return p

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` in a forked child (work that runs torch ops: never in here)."""
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"setup step {fn.__name__} failed")


# =============================================================================================
# Data and configs a user would write
# =============================================================================================
def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


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
            m += [{"role": "user", "content": _sentence(rng, 2, 12)},
                  {"role": "assistant", "content": _sentence(rng, 1, 10)}]  # fmt: skip
        rows.append({"messages": m})
    return rows


def pref_rows(n: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": [{"role": "user", "content": _sentence(rng, 2, 10)}],
             "chosen": "alpha " + _sentence(rng, 1, 6 + i % 5),
             "rejected": "zulu " + _sentence(rng, 1, 4)} for i in range(n)]  # fmt: skip


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
        "train": {"output_dir": output_dir, "max_steps": 1, "batch_size": 4, "lr": 1e-3,
                  "warmup": 0, "log_every": 1, "eval_every": 0, "save_every": 0,
                  "progress": False, "tensorboard": False, "precision": "fp32"},
    }  # fmt: skip
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_yaml(path: Path, tree) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


# =============================================================================================
# Comparing run dirs
# =============================================================================================
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
    return {"identical": not differ and not order_only, "equivalent": not differ,
            "differ": differ, "order_only": order_only}  # fmt: skip


def metric_rows(run: Path) -> list[dict]:
    rows = []
    for line in _read(run / "metrics.jsonl").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            rows.append({"unparsable": line})
            continue
        rows.append({k: v for k, v in r.items()
                     if k not in TIMING_KEYS and not k.startswith("time/")})  # fmt: skip
    return rows


def leftovers(run: Path) -> list[str]:
    found = []
    for d in (run, run / "checkpoints"):
        if d.is_dir():
            found += [str(p.relative_to(run)) for p in d.iterdir()
                      if ".tmp" in p.name or p.name.endswith(".old")]  # fmt: skip
    return sorted(found)


def uncommitted(run: Path) -> list[str]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return [p.name for p in root.glob("step-*") if not (p / "COMMITTED").exists()]


def one_sentence(err: str) -> tuple[bool, list[str]]:
    lines = [x for x in err.splitlines() if x.startswith("strop: ")]
    return ("Traceback (most recent call last)" not in err and len(lines) == 1), lines


# =============================================================================================
# Class 1: faults
# =============================================================================================
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
        where = {"step": f"after step {self.at}", "checkpoint": f"writing a checkpoint (>= "
                 f"step {self.at})", "final": "writing final/"}[self.where]  # fmt: skip
        return f"{self.sig} {where}"


STAGES = {
    # stage: (steps, data writer, extra sections)
    "sft": (12, lambda p: jsonl(p, chat_rows(16)), {}),
    "dpo": (10, lambda p: jsonl(p, pref_rows(16)), {}),
    "grpo": (8, lambda p: jsonl(p, prompt_rows(16)), {
        "grpo": {"group_size": 4, "max_new_tokens": 12, "beta": 0.05, "num_iterations": 2,
                 "rewards": ["probe_rewards:letter_share"]},
    }),
}  # fmt: skip


def _stage_config(stage: str, out: str) -> dict:
    steps, _, extra = STAGES[stage]
    return train_config(
        out, "data.jsonl", stage,
        method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},  # dropout: RNG state matters
        train={"max_steps": steps, "batch_size": 2, "save_every": 1, "keep_last": 2,
               "warmup": 2, "lr": 1e-2 if stage == "grpo" else 1e-3},
        **extra,
    )  # fmt: skip


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
        for f, s in zip([f for f in faults if f.where == "checkpoint"], ["SIGKILL", "SIGTERM"],
                        strict=False):  # fmt: skip
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
        fault.landed = f"mid-write ({fault.landed} left)" if tmp.exists() else (
            f"just after {fault.landed} was committed")  # fmt: skip
    if fault.where == "final":
        fault.landed = ("mid-write (.final.tmp left, no final/)"
                        if (run / ".final.tmp").exists() and not (run / "final").exists()
                        else "after final/ was complete" if (run / "final").exists()
                        else "during final/")  # fmt: skip
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
            items.append({"class": "kill/SIGTERM", "stage": stage, "what": "reference run",
                          "survived": False, "problems": [f"reference exit {ref.rc}: {ref.err[-500:]}"]})  # fmt: skip
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
            items.append({"class": "kill/SIGTERM", "stage": stage, "what": fault.label,
                          "signal": fault.sig, "where": fault.where, "fired": fault.fired,
                          "landed": fault.landed, "exit": fault.exit,
                          "survived": fault.survived,
                          "problems": fault.problems + chain_problems})  # fmt: skip
        stages[stage] = {"final_identical_bytes": same["identical"],
                         "final_equivalent": same["equivalent"],
                         "json_files_differing_only_in_list_order": same["order_only"],
                         "metrics_same_rows": rows_same, "runs": runs,
                         "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        print(f"  faults/{stage}: {sum(f.survived for f in plan)}/{len(plan)} survived, "
              f"final/ {'byte-identical' if same['identical'] else same}, "
              f"{time.monotonic() - t0:.0f}s", flush=True)  # fmt: skip
    items += concurrency(L, work / "concurrent", quick)
    items += quickstart_interrupts(work / "quickstart", quick)
    items += disk_full(L, work / "disk", mount_ok, quick)
    return {"items": items, "stages": stages}


# ---- concurrent writers, reruns of a finished run -------------------------------------------
def _writer_pair(L: Launcher, d: Path, name: str, delay: float, second_overrides: list[str],
                 ref: Path) -> dict:  # fmt: skip
    a = L.start(["train", "conc.yaml", f"train.output_dir={name}"], d, d / "logs" / f"{name}-a")
    time.sleep(delay)
    a_running = a.poll() is None
    b = L.start(["train", "conc.yaml", f"train.output_dir={name}", *second_overrides], d,
                d / "logs" / f"{name}-b")  # fmt: skip
    a.wait()
    b.wait()
    problems = []
    (win, lose) = (a, b) if a.rc == 0 else (b, a)
    if sorted([a.rc, b.rc], key=str) != [0, 2]:
        problems.append(f"exits {a.rc} and {b.rc}, expected one 0 and one 2")
    ok, lines = one_sentence(lose.err)
    want = f"(PID {win.pid})"
    if not ok or want not in (lines[0] if lines else ""):
        problems.append(f"the refused run's stderr does not name {want} in one sentence: "
                        f"{lose.err[-300:]!r}")  # fmt: skip
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
    return {"class": "concurrent writers", "stage": "sft",
            "what": f"two `strop train` on one output_dir, {how}{diff}",
            "exit": [a.rc, b.rc], "refused_stderr": lines[:1], "survived": not problems,
            "problems": problems}  # fmt: skip


def concurrency(L: Launcher, d: Path, quick: bool) -> list[dict]:
    jsonl(d / "data.jsonl", chat_rows(24, seed=1))
    cfg = train_config("ref", "data.jsonl", "sft",
                       method={"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
                       train={"max_steps": 16, "batch_size": 2, "save_every": 2, "keep_last": 2})  # fmt: skip
    write_yaml(d / "conc.yaml", cfg)
    ref = L.run(["train", "conc.yaml"], d, d / "logs" / "ref")
    if ref.rc != 0:
        return [{"class": "concurrent writers", "what": "reference run", "survived": False,
                 "problems": [f"exit {ref.rc}: {ref.err[-400:]}"]}]  # fmt: skip
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
        p = L.run(["train", "conc.yaml", "train.output_dir=apart-changed", *overrides], d,
                  d / "logs" / f"rerun-{overrides[0]}")  # fmt: skip
        ok, lines = one_sentence(p.err)
        problems = []
        if p.rc != want_rc or not ok or names not in lines[0]:
            problems.append(f"exit {p.rc}, stderr {p.err[-300:]!r}")
        now = {n: (run / n).read_bytes() for n in before}
        if now != before:
            problems.append("config.yaml or metrics.jsonl changed before the refusal")
        items.append({"class": "reruns of a finished run", "stage": "sft",
                      "what": f"rerun with {' '.join(overrides)}", "exit": p.rc,
                      "stderr": lines[:1], "survived": not problems, "problems": problems})  # fmt: skip
    # other training data: another file, then the same file with one word changed
    jsonl(d / "data-other.jsonl", chat_rows(24, seed=7))
    p0 = L.run(["train", "conc.yaml", "train.output_dir=apart-changed", "data.train=data-other.jsonl"],
               d, d / "logs" / "rerun-other-data")  # fmt: skip
    problems = []
    ok, lines = one_sentence(p0.err)
    if p0.rc != 2 or not ok or "data.train" not in lines[0]:
        problems.append(f"another data file: exit {p0.rc}, stderr {p0.err[-300:]!r}")
    original = (d / "data.jsonl").read_bytes()
    (d / "data.jsonl").write_bytes(original.replace(b"alpha", b"omega", 1))
    try:
        p1 = L.run(["train", "conc.yaml", "train.output_dir=apart-changed"], d,
                   d / "logs" / "rerun-edited-data")  # fmt: skip
    finally:
        (d / "data.jsonl").write_bytes(original)
    ok1, lines1 = one_sentence(p1.err)
    if p1.rc != 2 or not ok1 or "changed since" not in lines1[0]:
        problems.append(f"the same file edited: exit {p1.rc}, stderr {p1.err[-300:]!r}")
    if {n: (run / n).read_bytes() for n in before} != before:
        problems.append("config.yaml or metrics.jsonl changed before the refusal")
    items.append({"class": "reruns of a finished run", "stage": "sft",
                  "what": "rerun with other training data (another file; the same file edited)",
                  "exit": [p0.rc, p1.rc], "stderr": lines[:1] + lines1[:1],
                  "survived": not problems, "problems": problems})  # fmt: skip
    p = L.run(["train", "conc.yaml", "train.output_dir=apart-changed", "train.max_steps=18"], d,
              d / "logs" / "rerun-more")  # fmt: skip
    steps = [r.get("step") for r in metric_rows(run) if "loss" in r]
    problems = []
    if p.rc != 0 or "resumed from" not in p.out or steps != list(range(1, 19)):
        problems.append(f"exit {p.rc}, steps logged {steps}, stderr {p.err[-300:]!r}")
    items.append({"class": "reruns of a finished run", "stage": "sft",
                  "what": "rerun with train.max_steps raised (harmless: must resume)",
                  "exit": p.rc, "survived": not problems, "problems": problems})  # fmt: skip
    return items


# ---- the quickstart script, interrupted ---------------------------------------------------
def quickstart_interrupts(d: Path, quick: bool) -> list[dict]:
    """examples/events/quickstart.py on tiny-llama, stopped with Ctrl-C while it scores the
    base model and with SIGTERM while it trains: one sentence, exit 128 + signal."""
    rows = (ROOT / "examples/events/train.jsonl").read_text().splitlines()[:16]
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.jsonl").write_text("\n".join(rows) + "\n")
    cases = [("SIGINT", "[2/4]", 130, "while scoring the base model")]
    if not quick:
        cases.append(("SIGTERM", "metrics", 143, "while training"))
    items = []
    for sig, moment, want, where in cases:
        run = d / f"run-{sig}"
        cmd = [sys.executable, "examples/events/quickstart.py", "--eval-n", "1",
               "model.name=tiny-llama", f"data.train={d / 'train.jsonl'}", "data.eval=null",
               f"train.output_dir={run}", "train.max_steps=40", "train.precision=fp32",
               "train.batch_size=1", "train.progress=false"]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
        env.pop("STROP_DEBUG", None)
        out, err = d / f"{sig}.out", d / f"{sig}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fo, stderr=fe,
                                 stdin=subprocess.DEVNULL,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        fired = False
        end = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < end:
            ready = moment in _read(out) if moment != "metrics" else any(
                x.endswith("}") for x in _read(run / "metrics.jsonl").splitlines())  # fmt: skip
            if ready:
                p.send_signal(getattr(signal, sig))
                fired = True
                break
            time.sleep(0.02)
        try:
            p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        text = _read(err)
        last = text.strip().splitlines()[-1] if text.strip() else ""
        problems = []
        if not fired:
            problems.append(f"the script ended (exit {p.returncode}) before the moment came")
        elif (
            p.returncode != want or "Traceback" in text or not last.startswith("strop: interrupted")
        ):
            problems.append(f"exit {p.returncode} (want {want}), last stderr line {last!r}"
                            + ("; a traceback" if "Traceback" in text else ""))  # fmt: skip
        items.append({"class": "quickstart interrupted", "stage": "sft",
                      "what": f"{sig} to examples/events/quickstart.py {where}", "fired": fired,
                      "exit": p.returncode, "stderr": [last], "survived": not problems,
                      "problems": problems})  # fmt: skip
    return items


# ---- disk full ------------------------------------------------------------------------------
def try_mount(where: Path, size: int) -> str:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
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
    cases = ["final/", "checkpoint (then more room and a resume)", "merge output",
             "prepare output"]  # fmt: skip
    if mount_why:
        return [{"class": "disk full", "what": c, "tried": False, "survived": False,
                 "problems": [f"not tried: cannot mount a tmpfs here ({mount_why})"]}
                for c in cases]  # fmt: skip
    items = []
    jsonl(d / "data.jsonl", chat_rows(16, seed=2))
    mounts: list[Path] = []
    try:
        # final/ that does not fit: a full fine-tune's model (~450 KB) into a 300 KB run dir
        write_yaml(d / "full.yaml", train_config("small/run", "data.jsonl", "sft",
                                                 train={"max_steps": 2}))  # fmt: skip
        why = try_mount(d / "small", 300_000)
        mounts.append(d / "small")
        p = L.run(["train", "full.yaml"], d, d / "logs" / "final")
        problems = _no_space(p) if not why else [why]
        run = d / "small" / "run"
        if (run / "final").exists():
            problems.append(f"final/ exists: {sorted(x.name for x in (run / 'final').iterdir())}")
        if left := leftovers(run):
            problems.append(f"left behind: {left}")
        items.append({"class": "disk full", "what": "final/ does not fit (300 KB tmpfs)",
                      "tried": True, "exit": p.rc, "stderr": one_sentence(p.err)[1][:1],
                      "survived": not problems, "problems": problems})  # fmt: skip
        # a checkpoint that does not fit; then the user makes room and reruns: it resumes
        cfg = train_config("ckpt-run", "data.jsonl", "sft",
                           train={"max_steps": 4, "save_every": 1, "keep_last": 1})  # fmt: skip
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
        items.append({"class": "disk full", "what": "a checkpoint does not fit (2.2 MB tmpfs), "
                      "then room is made and the same command reruns", "tried": True,
                      "exit": [p.rc, p2.rc], "stderr": first_err, "survived": not problems,
                      "problems": problems})  # fmt: skip
        # a merge output that does not fit
        if ref.rc == 0:
            from strop.hub import resolve_model

            base = str(resolve_model("tiny-llama"))
            write_yaml(d / "merge.yaml", {"method": "linear",
                       "models": [base, str(d / "ckpt-ref" / "final")],
                       "output": {"dir": "mout/merged"}})  # fmt: skip
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
            items.append({"class": "disk full", "what": "merge output does not fit (300 KB tmpfs)",
                          "tried": True, "exit": p.rc, "stderr": one_sentence(p.err)[1][:1],
                          "survived": not problems, "problems": problems})  # fmt: skip
        # a prepare output that does not fit
        rng = random.Random(5)
        jsonl(d / "big.jsonl", [{"text": " ".join(rng.choice(WORDS) for _ in range(200)) + f" {i}"}
                                for i in range(400)])  # fmt: skip
        write_yaml(d / "prep.yaml", {"inputs": ["big.jsonl"], "output": {"dir": "pout/clean"},
                                     "steps": ["normalise"]})  # fmt: skip
        why = try_mount(d / "pout", 100_000)
        mounts.append(d / "pout")
        p = L.run(["prepare", "prep.yaml"], d, d / "logs" / "prepare")
        problems = _no_space(p) if not why else [why]
        out = d / "pout" / "clean"
        if out.exists():
            problems.append(f"output dir left: {sorted(x.name for x in out.iterdir())}")
        items.append({"class": "disk full", "what": "prepare output does not fit (100 KB tmpfs)",
                      "tried": True, "exit": p.rc, "stderr": one_sentence(p.err)[1][:1],
                      "survived": not problems, "problems": problems})  # fmt: skip
    finally:
        for m in reversed(mounts):
            umount(m)
    return items


# =============================================================================================
# Class 2: bad inputs
# =============================================================================================
@dataclass
class Case:
    id: str
    verb: str
    what: str
    argv: list[str]
    files: dict = field(default_factory=dict)  # name -> str | bytes | None (a dir) | callable(d)
    expect: str = "refuse"  # refuse | quarantine | accept
    names: tuple[str, ...] = ()  # the sentence must contain one of these (file / key / field)
    check: object = None  # callable(case_dir, proc) -> list of problems (quarantine / accept)


def _y(tree) -> str:
    return yaml.safe_dump(tree, sort_keys=False)


def sft_cfg(**sections) -> str:
    """The base training config (tiny-llama, sft, full, one step) with sections updated."""
    return _y(train_config("run", "chat.jsonl", "sft", **sections))


BAD_JSON = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"'


def _rows_text(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _good(n=40):
    return chat_rows(n, seed=3)


def _msgs(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


ASSISTANT_FIRST = _msgs(("assistant", "Hello!"), ("user", "hi"), ("assistant", "How can I help?"))
GPT_FIRST = {"conversations": [{"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "hi"},
                               {"from": "gpt", "value": "How can I help?"}]}  # fmt: skip
SHAREGPT_GOOD = [{"conversations": [{"from": "human", "value": f"question {i}"},
                                    {"from": "gpt", "value": f"answer {i}"}]} for i in range(40)]  # fmt: skip


def _quarantined(origin: str, qfile: str, printed: bool = True):
    """A check: exit 0, ``origin`` (file:line) printed (``printed``; else the quarantine file's
    path and a count of bad rows are printed), and ``qfile`` holds that row."""

    def check(d: Path, p: Proc) -> list[str]:
        problems = []
        said = p.out + p.err
        if printed and origin not in said:
            problems.append(f"output does not name {origin}")
        if not printed and (qfile not in said or not re.search(r"\(\d+ malformed\)", said)):
            problems.append(f"output does not count the bad rows and point to {qfile}")
        q = d / qfile
        if not q.exists():
            problems.append(f"no quarantine file {qfile}")
        elif origin.split(":")[-1] not in q.read_text():
            problems.append(f"{qfile} does not hold line {origin}")
        return problems

    return check


def _scored(task: str):
    """A check for eval: the results file it says it wrote names ``task`` with a finite score."""

    def check(d: Path, p: Proc) -> list[str]:
        m = re.search(r"wrote (\S+results\.json)", p.out)
        if not m or not (d / m.group(1)).exists():
            return ["no results.json written"]
        text = (d / m.group(1)).read_text()
        if task not in text:
            return [f"results.json lacks task {task!r}"]
        return ["a score is NaN"] if "NaN" in text else []

    return check


def catalogue(models: Path) -> list[Case]:
    """User mistakes, verb by verb. Each case dir also holds the base files (see _base_files)."""
    C: list[Case] = []

    def t(id, what, overrides=(), files=None, cfg=None, **kw):
        f = dict(files or {})
        if cfg is not None:
            f["c.yaml"] = cfg
        C.append(Case(id, "train", what, ["train", "c.yaml", *overrides], f, **kw))

    # ---- train: keys, types, numbers ---------------------------------------------------------
    t(
        "t-key-top",
        "unknown top-level section (typo 'trian')",
        cfg=sft_cfg().replace("\ntrain:", "\ntrian:"),
        names=("trian",),
    )
    t(
        "t-key-section",
        "unknown key in a section (train.lr_rate)",
        cfg=sft_cfg(train={"lr_rate": 1e-4}),
        names=("train.lr_rate",),
    )
    t("t-key-override", "typo in an override key", ["train.lrr=1e-4"], names=("train.lrr",))
    t("t-key-model", "typo in model section", ["model.nmae=tiny-llama"], names=("model.nmae",))
    t("t-key-data", "typo in data section", ["data.max_len=64"], names=("data.max_len",))
    t(
        "t-method-param",
        "a LoRA parameter misspelt",
        ["method.name=lora", "method.rank=8"],
        names=("rank",),
    )
    t(
        "t-method-param-other",
        "a LoRA parameter on method full",
        ["method.r=8"],
        names=("method", "'r'"),
    )
    t("t-method-name", "method name misspelt", ["method.name=lorra"], names=("lorra",))
    t("t-stage", "stage misspelt", ["stage=sftt"], names=("stage",))
    t(
        "t-type-bs",
        "batch_size not a number",
        ["train.batch_size=many"],
        names=("train.batch_size",),
    )
    t("t-type-steps", "max_steps a fraction", ["train.max_steps=1.5"], names=("train.max_steps",))
    t("t-type-lr-list", "lr a list", ["train.lr=[1e-4, 2e-4]"], names=("train.lr",))
    t("t-type-packing", "packing not a boolean", ["data.packing=maybe"], names=("data.packing",))
    t("t-type-model", "model.name a number", ["model.name=5"], names=("model.name", "5"))
    t("t-type-section", "a section given as a string", ["train=fast"], names=("train",))
    t("t-bs-zero", "batch_size 0", ["train.batch_size=0"], names=("train.batch_size",))
    t("t-bs-neg", "batch_size negative", ["train.batch_size=-4"], names=("train.batch_size",))
    t("t-steps-neg", "max_steps negative", ["train.max_steps=-1"], names=("train.max_steps",))
    t("t-epochs-neg", "epochs negative", ["train.epochs=-1"], names=("train.epochs",))
    t("t-keep-zero", "keep_last 0", ["train.keep_last=0"], names=("train.keep_last",))
    t("t-maxlen-zero", "max_length 0", ["data.max_length=0"], names=("data.max_length",))
    t(
        "t-lora-r0",
        "LoRA rank 0",
        ["method.name=lora", "method.r=0"],
        names=("method.r", "'r'", " r"),
    )
    t("t-precision", "precision unknown", ["train.precision=fp8x"], names=("train.precision",))
    t("t-lr-inf", "lr = .inf", ["train.lr=.inf"], names=("train.lr",))
    t("t-lr-nan", "lr = .nan", ["train.lr=.nan"], names=("train.lr",))
    t(
        "t-lr-neginf-yaml",
        "lr -.inf written in the YAML file",
        cfg=sft_cfg(train={"lr": float("-inf")}),
        names=("train.lr",),
    )
    t("t-lr-string-inf", "lr 'inf' as a quoted string", ["train.lr='inf'"], names=("train.lr",))
    t(
        "t-gradnorm-nan",
        "max_grad_norm .nan",
        ["train.max_grad_norm=.nan"],
        names=("train.max_grad_norm",),
    )
    t("t-warmup-inf", "warmup .inf", ["train.warmup=.inf"], names=("train.warmup",))
    t(
        "t-dropout-nan",
        "LoRA dropout .nan",
        ["method.name=lora", "method.dropout=.nan"],
        names=("dropout",),
    )
    t(
        "t-lr-absurd",
        "lr 1e30 (trains to nonsense)",
        ["train.lr=1e30", "train.max_steps=4"],
        names=("non-finite", "not finite", "train.lr"),
    )
    t("t-lr-negative", "lr negative", ["train.lr=-1e-3"], names=("train.lr",))
    # ---- train: YAML and overrides -----------------------------------------------------------
    dup = sft_cfg().replace("  name: tiny-llama\n", "  name: tiny-llama\n  name: tiny-qwen2\n")
    t(
        "t-dup-key",
        "duplicate key in the YAML (model.name twice)",
        cfg=dup,
        names=("duplicate key",),
    )
    t(
        "t-dup-section",
        "duplicate top-level section (train: twice)",
        cfg=sft_cfg() + "train:\n  lr: 0.1\n",
        names=("duplicate key",),
    )
    t("t-other-stage-override", "a dpo section under stage sft", ["dpo.beta=0.5"], names=("dpo",))
    t(
        "t-other-stage-yaml",
        "a grpo section under stage sft",
        cfg=sft_cfg(grpo={"group_size": 4, "rewards": ["exact_match"]}),
        names=("grpo",),
    )
    t(
        "t-packing-dpo",
        "packing for dpo",
        ["stage=dpo", "data.train=pref.jsonl", "data.packing=true"],
        names=("data.packing",),
    )
    t("t-ov-empty-key", "override '=5'", ["=5"], names=("=5",))
    t("t-ov-empty-part", "override 'a..b=1'", ["a..b=1"], names=("a..b",))
    t("t-ov-bad-yaml", "override 'x=['", ["x=["], names=("x=[",))
    t(
        "t-ov-bad-yaml-known",
        "override 'train.lr=[' (a known key, bad value)",
        ["train.lr=["],
        names=("train.lr",),
    )
    t("t-ov-no-equals", "override without '='", ["train.lr"], names=("train.lr",))
    t("t-ov-trailing-dot", "override 'train.=1'", ["train.=1"], names=("train.=1", "train."))
    t("t-ov-unknown-section", "override of an unknown section", ["foo.bar=1"], names=("foo",))
    t("t-ov-into-scalar", "override reaching into a scalar", ["train.lr.x=1"], names=("train.lr",))
    C.append(
        Case(
            "t-cfg-dir",
            "train",
            "config path is a directory",
            ["train", "emptydir"],
            names=("emptydir",),
        )
    )
    C.append(
        Case(
            "t-cfg-missing",
            "train",
            "config file missing",
            ["train", "nope.yaml"],
            names=("nope.yaml",),
        )
    )
    t(
        "t-cfg-binary",
        "config file is binary, not YAML",
        cfg=bytes(range(256)) * 4,
        names=("c.yaml",),
    )
    t("t-cfg-syntax", "config YAML syntax error", cfg="train:\n  lr: [1,\n", names=("c.yaml",))
    t(
        "t-cfg-tabs",
        "config indented with a tab",
        cfg="model:\n\tname: tiny-llama\n",
        names=("c.yaml",),
    )
    t("t-cfg-list", "config is a YAML list", cfg="- model\n- train\n", names=("c.yaml",))
    t("t-cfg-scalar", "config is a bare string", cfg="hello\n", names=("c.yaml",))
    t("t-cfg-empty", "config file empty", cfg="", names=("c.yaml", "data.train"))
    C.append(
        Case(
            "t-cfg-json",
            "train",
            "config given as a JSONL data file",
            ["train", "chat.jsonl"],
            names=("chat.jsonl",),
        )
    )
    # ---- train: paths ------------------------------------------------------------------------
    t("t-out-file", "output_dir is a file", ["train.output_dir=afile"], names=("train.output_dir",))
    t(
        "t-out-under-file",
        "output_dir under a file",
        ["train.output_dir=afile/run"],
        names=("train.output_dir",),
    )
    t("t-out-empty", "output_dir empty", ["train.output_dir=''"], names=("train.output_dir",))
    t(
        "t-data-missing",
        "data.train missing",
        ["data.train=missing.jsonl"],
        names=("missing.jsonl",),
    )
    t(
        "t-data-empty",
        "data.train empty",
        ["data.train=empty.jsonl"],
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    t(
        "t-data-blank-lines",
        "data.train only blank lines",
        ["data.train=blank.jsonl"],
        files={"blank.jsonl": "\n\n  \n"},
        names=("blank.jsonl",),
    )
    t("t-data-dir", "data.train a directory", ["data.train=emptydir"], names=("emptydir",))
    t("t-data-number", "data.train a number", ["data.train=5"], names=("data.train", "5"))
    t(
        "t-data-list-missing",
        "data.train a list with a missing file",
        ["data.train=[chat.jsonl, gone.jsonl]"],
        names=("gone.jsonl",),
    )
    t(
        "t-data-all-bad-json",
        "every line bad JSON",
        ["data.train=bad.jsonl"],
        files={"bad.jsonl": (BAD_JSON + "\n") * 30},
        names=("bad.jsonl",),
    )
    t(
        "t-data-one-bad-json",
        "one bad JSON line of 41 (default threshold 1%)",
        ["data.train=bad.jsonl"],
        files={"bad.jsonl": _rows_text(_good()) + BAD_JSON + "\n"},
        names=("bad.jsonl:41", "bad.jsonl"),
    )
    t(
        "t-data-one-bad-json-q",
        "one bad JSON line of 41 under max_bad_fraction=0.05",
        ["data.train=bad.jsonl", "data.max_bad_fraction=0.05"],
        files={"bad.jsonl": _rows_text(_good()) + BAD_JSON + "\n"},
        expect="quarantine",
        check=_quarantined("bad.jsonl:41", "run/quarantine-train.jsonl"),
    )
    t(
        "t-data-no-fields",
        "rows with neither messages nor text",
        ["data.train=qa.jsonl"],
        files={"qa.jsonl": _rows_text({"question": "q", "answer": "a"} for _ in range(10))},
        names=("qa.jsonl",),
    )
    t(
        "t-data-format-mismatch",
        "data.format alpaca for messages rows",
        ["data.format=alpaca"],
        names=("chat.jsonl", "alpaca", "instruction"),
    )
    t(
        "t-data-csv",
        "data.train a CSV file",
        ["data.train=table.csv"],
        files={"table.csv": "a,b\n1,2\n"},
        names=("table.csv",),
    )
    t(
        "t-data-latin1",
        "data.train not UTF-8",
        ["data.train=latin.jsonl"],
        files={"latin.jsonl": ('{"text": "caf\xe9"}\n' * 5).encode("latin-1")},
        names=("latin.jsonl",),
    )
    t(
        "t-data-json-array",
        "a .jsonl file holding one JSON array of rows",
        ["data.train=arr.jsonl"],
        files={"arr.jsonl": json.dumps(_good(5))},
        names=("arr.jsonl",),
    )
    t(
        "t-data-content-null",
        "assistant content null in every row",
        ["data.train=null.jsonl"],
        files={
            "null.jsonl": _rows_text(_msgs(("user", "q"), ("assistant", None)) for _ in range(10))
        },
        names=("null.jsonl",),
    )
    t(
        "t-data-role-unknown",
        "an unknown role ('bot') in every row",
        ["data.train=bot.jsonl"],
        files={"bot.jsonl": _rows_text(_msgs(("user", "q"), ("bot", "a")) for _ in range(10))},
        names=("bot.jsonl",),
    )
    t(
        "t-data-assistant-first-all",
        "every conversation opens with the assistant",
        ["data.train=af.jsonl"],
        files={"af.jsonl": _rows_text([ASSISTANT_FIRST] * 10)},
        names=("af.jsonl",),
    )
    t(
        "t-data-assistant-first-one",
        "one assistant-first row of 41 (default threshold)",
        ["data.train=af.jsonl"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        names=("af.jsonl",),
    )
    t(
        "t-data-assistant-first-q",
        "one assistant-first row of 41, max_bad_fraction=0.05",
        ["data.train=af.jsonl", "data.max_bad_fraction=0.05"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        expect="quarantine",
        check=_quarantined("af.jsonl:41", "run/quarantine-train.jsonl"),
    )
    t(
        "t-data-gpt-first-all",
        "ShareGPT, every row opens with gpt",
        ["data.train=sg.jsonl"],
        files={"sg.jsonl": _rows_text([GPT_FIRST] * 10)},
        names=("sg.jsonl",),
    )
    t(
        "t-data-gpt-first-q",
        "ShareGPT, one gpt-first row of 41, max_bad_fraction=0.05",
        ["data.train=sg.jsonl", "data.max_bad_fraction=0.05"],
        files={"sg.jsonl": _rows_text(SHAREGPT_GOOD + [GPT_FIRST])},
        expect="quarantine",
        check=_quarantined("sg.jsonl:41", "run/quarantine-train.jsonl"),
    )
    t(
        "t-data-no-assistant",
        "no assistant turn in any row",
        ["data.train=na.jsonl"],
        files={"na.jsonl": _rows_text(_msgs(("user", "anyone?")) for _ in range(10))},
        names=("na.jsonl",),
    )
    t(
        "t-data-system-only",
        "system message only",
        ["data.train=so.jsonl"],
        files={"so.jsonl": _rows_text(_msgs(("system", "be brief")) for _ in range(10))},
        names=("so.jsonl",),
    )
    t(
        "t-data-eval-missing",
        "data.eval a missing file",
        ["data.eval=gone.jsonl"],
        names=("gone.jsonl",),
    )
    t("t-data-eval-frac", "data.eval fraction 1.5", ["data.eval=1.5"], names=("data.eval",))
    t(
        "t-data-badfrac",
        "max_bad_fraction 2",
        ["data.max_bad_fraction=2"],
        names=("data.max_bad_fraction",),
    )
    t(
        "t-resume-bad",
        "train.resume a path that is no checkpoint",
        ["train.resume=maybe"],
        names=("train.resume",),
    )
    t("t-model-unknown", "unknown model name", ["model.name=tiny-lama"], names=("tiny-lama",))
    t(
        "t-model-gguf",
        "a .gguf path that does not exist",
        ["model.name=./nope.gguf"],
        names=("nope.gguf",),
    )
    t(
        "t-model-emptydir",
        "model a directory without a model",
        ["model.name=./emptydir"],
        names=("emptydir",),
    )
    t("t-model-file", "model a text file", ["model.name=./afile"], names=("afile",))
    # ---- train: stages -----------------------------------------------------------------------
    t(
        "t-dpo-sft-data",
        "dpo on chat rows (no chosen/rejected)",
        ["stage=dpo"],
        names=("chat.jsonl", "chosen"),
    )
    t(
        "t-dpo-no-rejected",
        "dpo rows without 'rejected'",
        ["stage=dpo", "data.train=p.jsonl"],
        files={"p.jsonl": _rows_text({"prompt": "q", "chosen": "a"} for _ in range(10))},
        names=("p.jsonl", "rejected"),
    )
    t(
        "t-dpo-same",
        "dpo rows where chosen == rejected (all)",
        ["stage=dpo", "data.train=p.jsonl"],
        files={
            "p.jsonl": _rows_text(
                {"prompt": "q", "chosen": "a", "rejected": "a"} for _ in range(10)
            )
        },
        names=("p.jsonl",),
    )
    t(
        "t-kto-label",
        "kto label 'maybe'",
        ["stage=kto", "data.train=k.jsonl"],
        files={
            "k.jsonl": _rows_text(
                {"prompt": "q", "completion": "a", "label": "maybe"} for _ in range(10)
            )
        },
        names=("k.jsonl", "label"),
    )
    t("t-rm-sft-data", "rm on chat rows", ["stage=rm"], names=("chat.jsonl", "chosen"))
    t(
        "t-pt-chat-none",
        "pt on rows without text",
        ["stage=pt", "data.train=qa.jsonl"],
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(10))},
        names=("qa.jsonl",),
    )

    def g(id, what, grpo, overrides=(), **kw):
        base = {"group_size": 2, "max_new_tokens": 4, "rewards": ["probe_rewards:letter_share"]}
        cfg = _y(train_config("run", "prompts.jsonl", "grpo", grpo={**base, **grpo}))
        t(id, what, overrides, cfg=cfg, **kw)

    g(
        "t-grpo-dotted",
        "reward as a dotted path",
        {"rewards": ["mypkg.rewards.brevity"]},
        names=("module:function", "mypkg"),
    )
    g("t-grpo-unknown", "unknown reward name", {"rewards": ["nope"]}, names=("nope",))
    g("t-grpo-typo", "reward name misspelt", {"rewards": ["math_anser"]}, names=("math_anser",))
    g(
        "t-grpo-nomodule",
        "module:function whose module is missing",
        {"rewards": ["nomod:f"]},
        names=("nomod",),
    )
    g(
        "t-grpo-nofunc",
        "module:function whose function is missing",
        {"rewards": ["probe_rewards:nofunc"]},
        names=("nofunc",),
    )
    g("t-grpo-none", "no rewards", {"rewards": []}, names=("grpo.rewards",))
    g("t-grpo-group1", "group_size 1", {"group_size": 1}, names=("grpo.group_size",))
    g(
        "t-grpo-weight-nan",
        "reward weight .nan",
        {"rewards": [{"name": "probe_rewards:letter_share", "weight": float("nan")}]},
        names=("weight", "grpo.rewards"),
    )
    g(
        "t-grpo-field",
        "math_answer on rows without 'answer'",
        {"rewards": [{"name": "math_answer", "args": {"field": "solution"}}]},
        names=("solution",),
    )
    g(
        "t-grpo-code-tests",
        "code_tests on rows without 'tests'",
        {"rewards": ["code_tests"]},
        names=("tests",),
    )
    g(
        "t-grpo-prompt-method",
        "a prompt-tuning method under grpo",
        {},
        ["method.name=prompt"],
        names=("stage grpo", "grpo", "method"),
    )
    g(
        "t-grpo-chat-data",
        "grpo on rows without a prompt",
        {},
        ["data.train=qa.jsonl"],
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(10))},
        names=("qa.jsonl",),
    )
    t(
        "t-eval-tasks-missing",
        "train.eval_tasks file missing",
        ["train.eval_tasks=gone.yaml"],
        names=("gone.yaml", "train.eval_tasks"),
    )

    # ---- data inspect ------------------------------------------------------------------------
    def i(id, what, overrides=(), files=None, cfg=None, **kw):
        f = dict(files or {})
        if cfg is not None:
            f["c.yaml"] = cfg
        C.append(Case(id, "data inspect", what, ["data", "inspect", "c.yaml", *overrides], f, **kw))

    i(
        "i-data-missing",
        "data.train missing",
        ["data.train=missing.jsonl"],
        names=("missing.jsonl",),
    )
    i(
        "i-data-empty",
        "data.train empty",
        ["data.train=empty.jsonl"],
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    i("i-data-dir", "data.train a directory", ["data.train=emptydir"], names=("emptydir",))
    i(
        "i-bad-json",
        "every line bad JSON",
        ["data.train=bad.jsonl"],
        files={"bad.jsonl": (BAD_JSON + "\n") * 10},
        names=("bad.jsonl",),
    )
    i(
        "i-assistant-first",
        "one assistant-first row of 41 (default threshold)",
        ["data.train=af.jsonl"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        names=("af.jsonl:41",),
    )
    i(
        "i-gpt-first-q",
        "ShareGPT, one gpt-first row of 41, max_bad_fraction=0.05",
        ["data.train=sg.jsonl", "data.max_bad_fraction=0.05"],
        files={"sg.jsonl": _rows_text(SHAREGPT_GOOD + [GPT_FIRST])},
        expect="quarantine",
        check=lambda d, p: [] if "sg.jsonl:41" in p.out + p.err else ["sg.jsonl:41 not named"],
    )
    i("i-key", "typo in a key", ["data.max_len=64"], names=("data.max_len",))
    i("i-dup", "duplicate key in the YAML", cfg=dup, names=("duplicate key",))
    C.append(
        Case(
            "i-cfg-dir",
            "data inspect",
            "config path a directory",
            ["data", "inspect", "emptydir"],
            names=("emptydir",),
        )
    )
    i("i-model-unknown", "unknown model name", ["model.name=tiny-lama"], names=("tiny-lama",))
    i(
        "i-no-assistant",
        "no assistant turn in any row",
        ["data.train=na.jsonl"],
        files={"na.jsonl": _rows_text(_msgs(("user", "anyone?")) for _ in range(10))},
        names=("na.jsonl",),
    )

    # ---- prepare -----------------------------------------------------------------------------
    def p(id, what, overrides=(), files=None, cfg=None, **kw):
        f = dict(files or {})
        if cfg is not None:
            f["prep.yaml"] = cfg
        C.append(Case(id, "prepare", what, ["prepare", "prep.yaml", *overrides], f, **kw))

    prep = lambda **kw: _y({"inputs": ["in.jsonl"], "output": {"dir": "pout"},  # noqa: E731
                            "steps": ["normalise"], **kw})  # fmt: skip
    p("p-out-file", "output.dir a file", ["output.dir=afile"], names=("output.dir",))
    p(
        "p-out-under-file",
        "output.dir under a file",
        ["output.dir=afile/sub"],
        names=("output.dir",),
    )
    p("p-in-missing", "an input file missing", ["inputs=[gone.jsonl]"], names=("gone.jsonl",))
    p("p-in-dir", "an input that is a directory", ["inputs=[emptydir]"], names=("emptydir",))
    p(
        "p-in-empty",
        "an input that is empty",
        ["inputs=[empty.jsonl]"],
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    p("p-step-unknown", "unknown step name 'dedupe'", cfg=prep(steps=["dedupe"]), names=("dedupe",))
    p(
        "p-step-param",
        "a step parameter misspelt",
        cfg=prep(steps=[{"name": "filter", "min_char": 5}]),
        names=("min_char",),
    )
    p(
        "p-step-param-type",
        "a step parameter of the wrong type",
        cfg=prep(steps=[{"name": "filter", "min_chars": "five"}]),
        names=("min_chars",),
    )
    p("p-steps-string", "steps a string", cfg=prep(steps="normalise"), names=("steps",))
    p("p-workers", "num_workers -1", ["num_workers=-1"], names=("num_workers",))
    p("p-badfrac", "max_bad_fraction 2", ["max_bad_fraction=2"], names=("max_bad_fraction",))
    p(
        "p-badfrac-nan",
        "max_bad_fraction .nan",
        ["max_bad_fraction=.nan"],
        names=("max_bad_fraction",),
    )
    p(
        "p-all-bad",
        "every input row bad JSON",
        ["inputs=[bad.jsonl]"],
        files={"bad.jsonl": (BAD_JSON + "\n") * 10},
        names=("bad.jsonl", "malformed"),
    )
    p(
        "p-bad-q",
        "two bad JSON rows of 42, max_bad_fraction=0.1",
        ["inputs=[bad.jsonl]", "max_bad_fraction=0.1"],
        files={"bad.jsonl": _rows_text(_good()) + (BAD_JSON + "\n") * 2},
        expect="quarantine",
        check=_quarantined("bad.jsonl:41", "pout/quarantine.jsonl", printed=False),
    )
    p(
        "p-assistant-first-q",
        "one assistant-first row of 41, max_bad_fraction=0.05",
        ["inputs=[af.jsonl]", "max_bad_fraction=0.05"],
        files={"af.jsonl": _rows_text(_good() + [ASSISTANT_FIRST])},
        expect="quarantine",
        check=_quarantined("af.jsonl:41", "pout/quarantine.jsonl", printed=False),
    )
    p("p-split", "split.eval 1.5", ["split.eval=1.5"], names=("split.eval",))
    p(
        "p-decontam-missing",
        "decontaminate against a missing eval file",
        cfg=prep(steps=[{"name": "decontaminate", "eval_files": ["gone.jsonl"]}]),
        names=("gone.jsonl",),
    )
    p(
        "p-key-top",
        "top-level key misspelt ('input')",
        cfg=_y({"input": ["in.jsonl"], "output": {"dir": "pout"}}),
        names=("input",),
    )
    p(
        "p-override-type",
        "a step override of the wrong type",
        ["steps.normalise.nfkc=perhaps"],
        names=("nfkc", "steps"),
    )
    p(
        "p-dup",
        "duplicate key in the YAML",
        cfg=prep() + "output:\n  dir: other\n",
        names=("duplicate key",),
    )
    C.append(
        Case(
            "p-cfg-missing",
            "prepare",
            "config file missing",
            ["prepare", "nope.yaml"],
            names=("nope.yaml",),
        )
    )
    p("p-cfg-syntax", "config YAML syntax error", cfg="inputs: [in.jsonl\n", names=("prep.yaml",))

    # ---- eval --------------------------------------------------------------------------------
    def e(id, what, overrides=(), files=None, tasks=None, top=None, **kw):
        tree = {"models": {"tiny": "tiny-llama"}, "output_dir": "eout",
                "tasks": tasks if tasks is not None else
                [{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl"}]}  # fmt: skip
        tree.update(top or {})
        f = {"e.yaml": _y(tree), **(files or {})}
        C.append(Case(id, "eval", what, ["eval", "e.yaml", *overrides], f, **kw))

    e(
        "e-key-top",
        "top-level 'model' instead of 'models'",
        top={"model": "tiny-llama"},
        names=("model",),
    )
    e(
        "e-type",
        "task type misspelt",
        tasks=[{"name": "mc", "type": "multiplechoice", "data": "mc.jsonl"}],
        names=("multiplechoice", "type"),
    )
    e(
        "e-other-type-key",
        "shots on a generation task",
        tasks=[{"name": "g", "type": "generation", "data": "gen.jsonl", "shots": 3}],
        names=("shots",),
    )
    e(
        "e-other-type-key2",
        "labels on a multiple_choice task",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl", "labels": ["a"]}],
        names=("labels",),
    )
    e(
        "e-other-type-key3",
        "n_samples on a perplexity task",
        tasks=[{"name": "ppl", "type": "perplexity", "data": "chat.jsonl", "n_samples": 4}],
        names=("n_samples",),
    )
    e(
        "e-data-missing",
        "task data missing",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "gone.jsonl"}],
        names=("gone.jsonl",),
    )
    e(
        "e-mc-bad-header",
        "MC CSV with an unknown header",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "bad.csv"}],
        files={"bad.csv": "Q,Opt1,Opt2,Opt3,Opt4,Key\nwhat?,a,b,c,d,A\n"},
        names=("bad.csv",),
    )
    e(
        "e-mc-answer-range",
        "MC answer 'E' for four choices",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mcE.jsonl"}],
        files={
            "mcE.jsonl": _rows_text(
                [{"question": "q?", "choices": ["a", "b", "c", "d"], "answer": "E"}]
            )
        },
        names=("mcE.jsonl",),
    )
    e(
        "e-mc-no-choices",
        "MC rows without choices",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mcn.jsonl"}],
        files={"mcn.jsonl": _rows_text([{"question": "q?", "answer": "A"}])},
        names=("mcn.jsonl",),
    )
    e(
        "e-mc-empty-csv",
        "MC CSV empty",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "empty.csv"}],
        files={"empty.csv": ""},
        names=("empty.csv",),
    )
    e(
        "e-metric",
        "generation metric misspelt",
        tasks=[{"name": "g", "type": "generation", "data": "gen.jsonl", "metrics": ["rouge2"]}],
        names=("rouge2", "metrics"),
    )
    e(
        "e-passk",
        "pass_at_k above n_samples",
        tasks=[
            {
                "name": "g",
                "type": "generation",
                "data": "gen.jsonl",
                "n_samples": 2,
                "temperature": 0.8,
                "pass_at_k": [4],
            }
        ],
        names=("pass_at_k",),
    )
    e(
        "e-model-unknown",
        "unknown model name",
        top={"models": {"m": "tiny-lama"}},
        names=("tiny-lama",),
    )
    e(
        "e-model-gguf",
        "a .gguf path that does not exist",
        top={"models": {"m": "./nope.gguf"}},
        names=("nope.gguf",),
    )
    e(
        "e-baseline",
        "baseline not among the models",
        top={"baseline": "base"},
        names=("baseline", "base"),
    )
    e(
        "e-adapter-missing",
        "adapter dir missing",
        top={"models": {"m": {"model": "tiny-llama", "adapter": "gone-adapter"}}},
        names=("gone-adapter",),
    )
    e(
        "e-limit",
        "limit 0",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl", "limit": 0}],
        names=("limit",),
    )
    e(
        "e-temp",
        "temperature negative",
        tasks=[{"name": "g", "type": "generation", "data": "gen.jsonl", "temperature": -1}],
        names=("temperature",),
    )
    e("e-out-file", "output_dir a file", top={"output_dir": "afile"}, names=("output_dir", "afile"))
    e("e-tasks-empty", "tasks empty", tasks=[], names=("tasks",))
    e("e-override", "override key misspelt", ["seeed=1"], names=("seeed",))
    e(
        "e-dup-task",
        "two tasks with the same name",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "mc.jsonl"}] * 2,
        names=("mc",),
    )
    e(
        "e-gen-bad-rows",
        "generation data with rows lacking messages",
        tasks=[{"name": "g", "type": "generation", "data": "qa.jsonl"}],
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(5))},
        names=("qa.jsonl",),
    )
    C.append(
        Case(
            "e-cfg-dir",
            "eval",
            "config path a directory",
            ["eval", "emptydir"],
            names=("emptydir",),
        )
    )
    # published layouts: must load (valid inputs, counted apart)
    e(
        "a-cmmlu",
        "CMMLU CSV as published (',Question,A,B,C,D,Answer')",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "test/tea.csv"}],
        files={
            "test/tea.csv": ",Question,A,B,C,D,Answer\n0,哪种茶叶通常不经过发酵？,红茶,绿茶,乌龙茶,普洱熟茶,B\n"
            '1,"下列哪一项,是泡茶时常用的器具？",盖碗,铁锅,砚台,算盘,A\n'
        },
        expect="accept",
        check=_scored("mc"),
    )
    e(
        "a-mmlu",
        "MMLU CSV as published (no header)",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "astro_test.csv"}],
        files={
            "astro_test.csv": "What orbits the Earth?,The Moon,Mars,The Sun,Venus,A\n"
            "How many planets?,7,8,9,10,B\n"
        },
        expect="accept",
        check=_scored("mc"),
    )
    e(
        "a-ceval",
        "C-Eval CSV as published (id, ..., answer, explanation)",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "river_val.csv"}],
        files={
            "river_val.csv": "id,question,A,B,C,D,answer,explanation\n0,河流的发源地叫什么？,河口,源头,三角洲,支流,B,源头\n"
        },
        expect="accept",
        check=_scored("mc"),
    )
    e(
        "a-hf-index",
        "HF JSONL with choices and an integer answer",
        tasks=[{"name": "mc", "type": "multiple_choice", "data": "hf.jsonl"}],
        files={
            "hf.jsonl": _rows_text(
                [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1}]
            )
        },
        expect="accept",
        check=_scored("mc"),
    )

    # ---- merge -------------------------------------------------------------------------------
    m1, m2 = str(models / "m1"), str(models / "m2")

    def m(id, what, tree=None, overrides=(), files=None, **kw):
        base = {"method": "linear", "models": [m1, m2], "output": {"dir": "mout"}}
        f = {"mg.yaml": _y({**base, **(tree or {})}), **(files or {})}
        C.append(Case(id, "merge", what, ["merge", "mg.yaml", *overrides], f, **kw))

    m(
        "m-truncated",
        "an input whose safetensors file is truncated",
        {"models": [m1, str(models / "truncated")]},
        names=("truncated",),
    )
    m(
        "m-garbage",
        "an input whose safetensors header is garbage",
        {"models": [m1, str(models / "garbage")]},
        names=("garbage",),
    )
    m(
        "m-missing",
        "an input that does not exist",
        {"models": [m1, "gone-model"]},
        names=("gone-model",),
    )
    m(
        "m-shapes",
        "inputs with mismatched shapes",
        {"models": [m1, str(models / "wide")]},
        names=("shape",),
    )
    m(
        "m-emptydir",
        "an input dir without weights",
        {"models": [m1, "emptydir"]},
        names=("emptydir",),
    )
    m(
        "m-pickle-only",
        "an input with only pytorch_model.bin (a pickle)",
        {"models": [m1, str(models / "pickled")]},
        names=("pickled", "pytorch_model.bin"),
        check=lambda d, p: ["the planted pickle ran"] if (models / "PWNED").exists() else [],
    )
    m("m-method", "method misspelt", {"method": "mean"}, names=("mean",))
    m(
        "m-slerp3",
        "slerp with three models",
        {"method": "slerp", "models": [m1, m2, m1]},
        names=("slerp",),
    )
    m("m-ties-base", "ties without a base", {"method": "ties"}, names=("base",))
    m("m-param-other", "params.t on linear", {"params": {"t": 0.3}}, names=("params.t",))
    m(
        "m-density",
        "density 1.5 on ties",
        {"method": "ties", "base": m1, "models": [{"model": m2, "density": 1.5}]},
        names=("density",),
    )
    m("m-weight-nan", "weight .nan", overrides=["models.0.weight=.nan"], names=("weight",))
    m("m-weight-type", "weight not a number", overrides=["models.0.weight=abc"], names=("weight",))
    m(
        "m-out-file",
        "output.dir a file",
        {"output": {"dir": "afile"}},
        names=("output.dir", "afile"),
    )
    m(
        "m-out-under-file",
        "output.dir under a file",
        {"output": {"dir": "afile/sub"}},
        names=("output.dir", "afile"),
    )
    m("m-out-key", "output key misspelt", {"output": {"dri": "x"}}, names=("output.dri",))
    m("m-models-empty", "models empty", {"models": []}, names=("models",))
    m(
        "m-index",
        "override into a models index that does not exist",
        overrides=["models.5.weight=1"],
        names=("models.5",),
    )
    m(
        "m-exists",
        "output dir exists (no overwrite)",
        files={"mout/keep.txt": "mine"},
        names=("output.overwrite", "mout"),
    )

    # ---- generate ----------------------------------------------------------------------------
    def gen(id, what, opts, files=None, **kw):
        base = {"-i": "gen.jsonl", "-o": "gout.jsonl", "-m": "tiny-llama", "--max-new-tokens": "4"}
        base.update(opts)
        argv = ["generate"] + [x for k, v in base.items() if v is not None for x in (k, v)]
        C.append(Case(id, "generate", what, argv, dict(files or {}), **kw))

    gen("g-in-missing", "input missing", {"-i": "gone.jsonl"}, names=("gone.jsonl",))
    gen("g-in-dir", "input a directory", {"-i": "emptydir"}, names=("emptydir",))
    gen(
        "g-in-empty",
        "input empty",
        {"-i": "empty.jsonl"},
        files={"empty.jsonl": ""},
        names=("empty.jsonl",),
    )
    gen(
        "g-in-fields",
        "input rows without messages or prompt",
        {"-i": "qa.jsonl"},
        files={"qa.jsonl": _rows_text({"question": "q"} for _ in range(3))},
        names=("qa.jsonl",),
    )
    gen(
        "g-in-badjson",
        "input with a bad JSON line",
        {"-i": "bad.jsonl"},
        files={"bad.jsonl": _rows_text([{"prompt": "hi"}]) + BAD_JSON + "\n"},
        names=("bad.jsonl",),
    )
    gen(
        "g-in-prompt-number",
        "input prompt a number",
        {"-i": "n.jsonl"},
        files={"n.jsonl": _rows_text([{"prompt": 5}])},
        names=("n.jsonl", "prompt"),
    )
    gen("g-model-unknown", "unknown model name", {"-m": "tiny-lama"}, names=("tiny-lama",))
    gen(
        "g-model-gguf",
        "a .gguf path that does not exist",
        {"-m": "./nope.gguf"},
        names=("nope.gguf",),
    )
    gen(
        "g-model-emptydir",
        "model a directory without a model",
        {"-m": "./emptydir"},
        names=("emptydir",),
    )
    gen("g-adapter-missing", "adapter dir missing", {"-a": "gone-adapter"}, names=("gone-adapter",))
    gen(
        "g-adapter-empty", "adapter dir without an adapter", {"-a": "emptydir"}, names=("emptydir",)
    )
    gen("g-out-dir", "output a directory", {"-o": "emptydir"}, names=("emptydir",))
    gen("g-out-under-file", "output under a file", {"-o": "afile/out.jsonl"}, names=("afile",))
    gen(
        "g-maxnew",
        "max-new-tokens 0",
        {"--max-new-tokens": "0"},
        names=("max-new-tokens", "max_new_tokens"),
    )
    gen("g-temp", "temperature negative", {"--temperature": "-1"}, names=("temperature",))
    gen("g-topp0", "top-p 0", {"--top-p": "0"}, names=("top-p", "top_p"))
    gen("g-topp-big", "top-p 1.5", {"--top-p": "1.5"}, names=("top-p", "top_p"))
    gen("g-batch", "batch-size 0", {"--batch-size": "0"}, names=("batch-size", "batch_size"))
    gen("g-temp-nan", "temperature nan", {"--temperature": "nan"}, names=("temperature",))
    return C


def _base_files(d: Path) -> None:
    jsonl(d / "chat.jsonl", chat_rows(40, seed=3))
    jsonl(d / "pref.jsonl", pref_rows(24))
    jsonl(d / "prompts.jsonl", prompt_rows(8))
    jsonl(d / "in.jsonl", chat_rows(20, seed=4))
    jsonl(d / "mc.jsonl", [{"question": "Which is a colour?", "choices": ["Red", "Dog", "Six", "Run"],
                            "answer": "A"}, {"question": "How many legs has a spider?",
                            "choices": ["Six", "Eight", "Ten", "Four"], "answer": "B"}])  # fmt: skip
    jsonl(
        d / "gen.jsonl", [_msgs(("user", "Say hi."), ("assistant", "hi")), {"prompt": "Count: 1 2"}]
    )
    (d / "c.yaml").write_text(sft_cfg())
    (d / "prep.yaml").write_text(_y({"inputs": ["in.jsonl"], "output": {"dir": "pout"},
                                     "steps": ["normalise"]}))  # fmt: skip
    (d / "probe_rewards.py").write_text(REWARD_MODULE)
    (d / "afile").write_text("a file, not a directory\n")
    (d / "emptydir").mkdir(exist_ok=True)


def build_merge_models(models: Path) -> None:
    """m1, m2 (tiny-llama seeds 1, 2), wide (other intermediate size), truncated, garbage,
    pickled (pytorch_model.bin holding a payload that would write models/PWNED)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from strop.tiny import build_tiny_model

    for seed in (1, 2):
        build_tiny_model("llama", models / f"m{seed}", seed=seed)
    cfg = LlamaConfig.from_pretrained(models / "m1")
    cfg.intermediate_size = 96
    LlamaForCausalLM(cfg).save_pretrained(models / "wide")
    for name in ("truncated", "garbage", "pickled"):
        shutil.copytree(models / "m2", models / name)
    for f in (models / "wide",):
        for tok in (models / "m1").glob("*"):
            if tok.name.startswith(("tokenizer", "chat_template")):
                shutil.copy(tok, f)
    st = models / "truncated" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    g = models / "garbage" / "model.safetensors"
    g.write_bytes(b"\xff" * 8 + b"not a header" * 100)
    (models / "pickled" / "model.safetensors").unlink()
    torch.save(Payload(models / "PWNED"), models / "pickled" / "pytorch_model.bin")


class Payload:
    """Unpickling this writes ``path``: what an attacker's file would do, harmlessly."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('code ran')",))


def classify(case: Case, p: Proc, d: Path) -> tuple[str, str]:
    """(verdict, note). Verdicts: clear | traceback | silent | other | handled | accepted."""
    err = p.err
    lines = [x for x in err.splitlines() if x.startswith("strop: error:")]
    block = err[err.index("strop: error:") :] if lines else ""  # the sentence and what it lists
    extra = list(case.check(d, p)) if case.check else []
    if p.rc == "timeout":
        return "other", "timed out"
    if "Traceback (most recent call last)" in err:
        tail = [x for x in err.strip().splitlines() if x and not x.startswith(" ")][-1:]
        return "traceback", (tail[0] if tail else "")[:300]
    if case.expect in ("quarantine", "accept"):
        ok = p.rc == 0 and not extra
        verdict = ("handled" if case.expect == "quarantine" else "accepted") if ok else "other"
        note = lines[0] if lines else ""
        return verdict, "; ".join([*(extra or []), note] if not ok else [note]) or f"exit {p.rc}"
    if p.rc == 0:
        return "silent", "exit 0" + (f"; {'; '.join(extra)}" if extra else "")
    if extra:
        return "other", "; ".join(extra)
    if p.rc in (1, 2) and len(lines) == 1:
        if case.names and not any(n in block for n in case.names):
            return "other", f"sentence names none of {list(case.names)}: {lines[0][:300]}"
        return "clear", lines[0][:400]
    if p.rc in (1, 2) and not lines and "Usage:" in err:
        msg = " ".join(
            x.strip("│╭╮╰╯─ ") for x in err.splitlines() if "Invalid value" in x or "Error" in x
        )
        return "other", f"argument parser's usage error, exit {p.rc}: {msg[:200]}"
    return "other", f"exit {p.rc}, {len(lines)} 'strop: error:' lines: {err.strip()[-300:]!r}"


def inputs_class(L: Launcher, work: Path, quick: bool, jobs: int, only: str = "") -> dict:
    models = work / "models"
    L.call(build_merge_models, models)
    cases = catalogue(models)
    if quick:
        cases = [c for k, c in enumerate(cases) if k % 4 == 0 or c.expect != "refuse"]
    if only:
        cases = [c for c in cases if c.id in only.split(",")]
    items, pending = [], list(cases)
    running: list[tuple[Case, Proc, Path]] = []
    t0 = time.monotonic()
    while pending or running:
        while pending and len(running) < jobs:
            c = pending.pop(0)
            d = work / "inputs" / c.id
            _base_files(d)
            for name, content in c.files.items():
                path = d / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content)
            running.append((c, L.start(c.argv, d, d / "log"), d))
        for entry in list(running):
            c, p, d = entry
            if p.poll() is None and time.monotonic() - p.t0 < 300:
                continue
            if p.rc is None:
                p.wait(0)
            running.remove(entry)
            verdict, note = classify(c, p, d)
            items.append({"id": c.id, "verb": c.verb, "what": c.what, "expect": c.expect,
                          "command": "strop " + " ".join(c.argv), "exit": p.rc,
                          "verdict": verdict, "note": note, "seconds": round(p.seconds, 1)})  # fmt: skip
            mark = {"clear": ".", "handled": "q", "accepted": "a"}.get(verdict, verdict[0].upper())
            print(mark, end="", flush=True)
        time.sleep(0.02)
    print(f"  ({time.monotonic() - t0:.0f}s)")
    order = {c.id: k for k, c in enumerate(cases)}
    items.sort(key=lambda x: order[x["id"]])
    return {"items": items}


# =============================================================================================
# Class 3: sandbox escapes (and code planted in files strop reads back)
# =============================================================================================
ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5"

SLOW_REWARDS = '''"""A user's reward functions that misbehave."""


def forever(prompts, completions, **kw):
    while True:
        pass


def broken(prompts, completions, **kw):
    raise ValueError("a bug in the user's reward")
'''


def _memory_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _alive_with(marker: str) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def _host_ip() -> str | None:
    with contextlib.suppress(OSError):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the route's address
        ip = s.getsockname()[0]
        s.close()
        return None if ip.startswith("127.") else ip
    return None


def home_entries() -> list[str]:
    """The host's home entries that are not part of the sandbox's view (the interpreter may
    live under the home dir, e.g. /root/.pyenv: that path is bound read-only on purpose)."""
    from strop import sandbox as S

    home = os.path.expanduser("~")
    view = [p for _, p, _ in S._interpreter()[1]]
    try:
        names = os.listdir(home)
    except OSError:
        return []
    return [os.path.join(home, n) for n in names
            if not any(v == os.path.join(home, n) or v.startswith(os.path.join(home, n) + "/")
                       for v in view)]  # fmt: skip


def escapes(out: Path, probe_pid: int, victim_pid: int, ports: dict, marker: str) -> list[tuple]:
    """(id, what, code, extra kwargs for code_tests). Each code ends by asserting that its
    escape worked, so an escape scores 1.0; the host checks are in sandbox_class."""
    T = lambda name: str(out / f"{name}.escaped")  # noqa: E731
    victim, secret = str(out / "victim.txt"), str(out / "secret.txt")
    E = [
        ("spawnv-shell", "a shell via multiprocessing.util.spawnv_passfds",
         "import multiprocessing.util as u, os, time\n"
         f"u.spawnv_passfds(b'/bin/sh', [b'sh', b'-c', b'id > {T('spawnv-shell')}'], ())\n"
         f"time.sleep(0.3)\nassert os.path.exists({T('spawnv-shell')!r})"),
        ("subprocess-shell", "subprocess.run(['/bin/sh', ...])",
         f"import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id > {T('subprocess-shell')}'], check=True)"),
        ("os-system", "os.system", f"import os\nassert os.system('id > {T('os-system')}') == 0"),
        ("execv-python", "exec a fresh interpreter writing outside",
         f"import os, sys\nif os.fork() == 0:\n    os.execv(sys.executable, [sys.executable, '-c', "
         f"\"open({T('execv-python')!r}, 'w').write('x')\"])\nos.wait()\n"
         f"assert os.path.exists({T('execv-python')!r})"),
        ("sqlite3-write", "sqlite3.connect on a path outside",
         f"import sqlite3\nsqlite3.connect({T('sqlite3-write')!r}).execute('create table t (x)')"),
        ("mkfifo", "os.mkfifo outside", f"import os\nos.mkfifo({T('mkfifo')!r})"),
        ("open-write", "open(path outside, 'w')", f"open({T('open-write')!r}, 'w').write('escaped')"),
        ("os-open-write", "os.open(O_CREAT) outside",
         f"import os\nfd = os.open({T('os-open-write')!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')"),
        ("shutil-copy", "shutil.copy of the code outside",
         f"import shutil\nshutil.copy(__file__, {T('shutil-copy')!r})"),
        ("symlink", "a symlink created outside", f"import os\nos.symlink('/etc/passwd', {T('symlink')!r})"),
        ("remove-victim", "os.remove of a host file", f"import os\nos.remove({victim!r})"),
        ("rename-victim", "os.rename of a host file", f"import os\nos.rename({victim!r}, {victim + '.moved'!r})"),
        ("truncate-victim", "open(host file, 'w')", f"open({victim!r}, 'w').write('overwritten')"),
        ("write-view", "a write into the read-only system view", "open('/usr/lib/strop-escaped', 'w')"),
        ("write-proc-sys", "a write to /proc/sys", "open('/proc/sys/kernel/hostname', 'w').write('x')"),
        ("read-passwd", "reading /etc/passwd", "assert 'root:' in open('/etc/passwd').read()"),
        ("read-secret", "reading a host file beside the run", f"assert 'SECRET' in open({secret!r}).read()"),
        ("read-repo", "reading strop's own source",
         f"assert 'sandbox' in open({str(ROOT / 'src/strop/sandbox.py')!r}).read()"),
        ("read-env", "reading the trainer's environment",
         "import os\nassert os.environ.get('STROP_PROBE_SECRET') == 'SECRET'"),
        ("read-home", "seeing the home directory's files",
         f"import os\nassert any(os.path.exists(p) for p in {home_entries()!r})"),
        ("see-processes", "seeing the trainer among the processes",
         f"import os\nassert os.path.exists('/proc/{probe_pid}/cmdline') and "
         f"b'reliability' in open('/proc/{probe_pid}/cmdline', 'rb').read()"),
        ("pidfd-signal", "pidfd_send_signal(SIGTERM) to the trainer",
         f"import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({probe_pid}), signal.SIGTERM)"),
        ("kill-trainer", "os.kill(trainer, SIGTERM)", f"import os, signal\nos.kill({probe_pid}, signal.SIGTERM)"),
        ("kill-victim", "os.kill(another host process, SIGKILL)", f"import os\nos.kill({victim_pid}, 9)"),
        ("kill-parent", "os.kill(os.getppid(), SIGTERM)",
         "import os, signal\nppid = os.getppid()\nassert ppid > 1\nos.kill(ppid, signal.SIGTERM)"),
        ("hook-globals", "reassigning the old hook's globals, then a socket to 127.0.0.1",
         "import sys\n_DENY, _ROOT = (), ''\nsys.modules['__main__'].__dict__.update(_DENY=(), _ROOT='')\n"
         f"import socket\nsocket.create_connection(('127.0.0.1', {ports['tcp']}), timeout=2).send(b'x')"),
        ("socket-tcp", "a TCP connection to a 127.0.0.1 listener",
         f"import socket\nsocket.create_connection(('127.0.0.1', {ports['tcp']}), timeout=2).send(b'x')"),
        ("socket-udp", "a UDP datagram to a 127.0.0.1 listener",
         f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         f"s.sendto(b'x', ('127.0.0.1', {ports['udp']}))\nimport time; time.sleep(0.2)",
         {"judge": "host"}),
        ("socket-abstract", "an abstract unix socket the trainer listens on",
         f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({ports['abstract']!r})\ns.send(b'x')"),
        ("setuid", "setuid(0)", "import os\nos.setuid(0)\nassert os.getuid() == 0"),
        ("mount", "mount(2) via ctypes",
         "import ctypes\nassert ctypes.CDLL(None).mount(b'none', b'/work', b'tmpfs', 0, None) == 0"),
        ("nested-userns", "a nested user+mount namespace, then a write into the view",
         "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "assert libc.unshare(0x10000000 | 0x20000) == 0, os.strerror(ctypes.get_errno())\n"
         "open('/usr/lib/strop-escaped', 'w')"),
        ("mknod", "mknod of a block device", "import os, stat\nos.mknod('/work/sda', stat.S_IFBLK | 0o600, os.makedev(8, 0))"),
        ("host-fds", "a host file descriptor inherited",
         "import os\nok = ('pipe:', 'socket:', 'anon_inode:', '/dev/null', '/work', '/proc')\n"
         "links = []\nfor n in os.listdir('/proc/self/fd'):\n    try:\n"
         "        links.append(os.readlink(f'/proc/self/fd/{n}'))\n    except OSError:\n"
         "        pass\nassert [x for x in links if not x.startswith(ok)], links"),
        ("fork-bomb", "a fork bomb", "import os\nwhile True:\n    os.fork()", {"timeout_s": 2}),
        ("memory-bomb", "a 4 GB allocation", "x = bytearray(4 * 2**30)", {"timeout_s": 2}),
        ("memory-bomb-list", "a list of 2**31 items", "x = [0] * (2**31)", {"timeout_s": 2}),
        ("disk-bomb", "200 MB written into the scratch dir",
         "with open('/work/big', 'wb') as f:\n    for _ in range(200):\n        f.write(b'x' * 2**20)",
         {"timeout_s": 5}),
        ("infinite-loop", "an infinite loop", "while True:\n    pass", {"timeout_s": 2}),
        ("setsid-grandchild", "a setsid grandchild holding stderr (wall clock)",
         "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
         f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
         f"'{marker}'])\n    os._exit(0)\nwhile True:\n    pass\n", {"timeout_s": 2}),
        ("stderr-flood", "stderr flooded for the whole timeout (trainer memory)",
         "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)", {"timeout_s": 2}),
        ("stdout-flood", "stdout flooded for the whole timeout (trainer memory)",
         "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", {"timeout_s": 2}),
    ]  # fmt: skip
    if ports.get("host_ip"):
        E.append(("socket-host-ip", f"a TCP connection to the host's own address {ports['host_ip']}",
                  f"import socket\nsocket.create_connection(({ports['host_ip']!r}, {ports['tcp_any']}), "
                  "timeout=2).send(b'x')"))  # fmt: skip
    return [e if len(e) == 4 else (*e, {}) for e in E]


def sandbox_class(L: Launcher, work: Path, quick: bool) -> dict:
    from strop import sandbox as S
    from strop.config.schema import RewardSpec
    from strop.train import rewards as R

    out = work / "sandbox"
    out.mkdir(parents=True, exist_ok=True)
    backends = [b for b in ("bwrap", "namespaces") if not S._probe(b)]
    problems_found = {b: S._PROBLEMS.get(b) or S._probe(b) for b in ("bwrap", "namespaces")}
    try:
        default = S.resolve_backend()
    except Exception as e:  # noqa: BLE001
        default = f"none ({e})"
    if quick:
        backends = backends[:1]
    items: list[dict] = []
    got_term: list[int] = []
    old_term = signal.signal(signal.SIGTERM, lambda s, f: got_term.append(s))
    os.environ["STROP_PROBE_SECRET"] = "SECRET"
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.settimeout(0.05)
    tcp_any = socket.socket()
    tcp_any.bind(("0.0.0.0", 0))
    tcp_any.listen()
    tcp_any.settimeout(0.05)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.05)
    abstract = f"\0strop-probe-{os.getpid()}"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(abstract)
    unix.listen()
    unix.settimeout(0.05)
    ports = {"tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1], "abstract": abstract,
             "tcp_any": tcp_any.getsockname()[1], "host_ip": _host_ip()}  # fmt: skip
    marker = f"strop-probe-grandchild-{os.getpid()}"

    def received() -> list[str]:
        got = []
        for name, srv in (("tcp", tcp), ("tcp-any", tcp_any), ("unix", unix)):
            with contextlib.suppress(TimeoutError, socket.timeout, BlockingIOError):
                conn, _ = srv.accept()
                conn.close()
                got.append(name)
        with contextlib.suppress(TimeoutError, socket.timeout, BlockingIOError):
            udp.recv(16)
            got.append("udp")
        return got

    try:
        for backend in backends:
            for eid, what, code, kw in escapes(out, os.getpid(), victim.pid, ports, marker):
                (out / "victim.txt").write_text("keep me")
                (out / "secret.txt").write_text("SECRET")
                for f in out.glob("*.escaped"):
                    f.unlink()
                with contextlib.suppress(OSError):
                    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
                rss0 = _memory_kb("VmRSS")
                stats = R.RewardStats(max_samples=1)
                t0 = time.monotonic()
                from contextlib import redirect_stderr
                from io import StringIO

                with redirect_stderr(StringIO()):
                    args = {k: v for k, v in kw.items() if k != "judge"}
                    spec = RewardSpec(name="code_tests", args={"sandbox": backend, **args})
                    total, _ = R.combine([spec], [[{"role": "user", "content": "q"}]],
                                         [ADD + code], {"tests": [TESTS]}, stats)  # fmt: skip
                wall = time.monotonic() - t0
                grew_mb = (_memory_kb("VmHWM") - rss0) / 1024
                time.sleep(0.1)
                host = []
                if list(out.glob("*.escaped")) or Path("/usr/lib/strop-escaped").exists():
                    host.append(
                        f"files appeared outside: {[p.name for p in out.glob('*.escaped')]}"
                    )
                if (out / "victim.txt").read_text(errors="replace") != "keep me":
                    host.append("a host file was changed or removed")
                if victim.poll() is not None:
                    host.append("a host process was killed")
                    victim = subprocess.Popen(
                        [sys.executable, "-c", "import time; time.sleep(3600)"]
                    )
                if got_term:
                    host.append("the trainer received SIGTERM")
                    got_term.clear()
                if got := received():
                    host.append(f"host listeners received a connection: {got}")
                if alive := _alive_with(marker):
                    host.append(f"processes outlived the sandbox: {alive}")
                    for pid in alive:
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
                limit = kw.get("timeout_s", 5) + 3
                if wall > limit:
                    host.append(f"took {wall:.1f}s, over timeout + 3s")
                if grew_mb > 16:
                    host.append(f"the trainer's memory grew by {grew_mb:.0f} MB")
                reason = stats.reasons[0] if stats.reasons else ""
                score = total[0]
                if kw.get("judge") == "host":  # fire and forget: only the host can tell
                    contained = not host
                else:
                    contained = score == 0.0 and bool(reason) and not host
                items.append({"id": eid, "backend": backend, "what": what, "score": score,
                              "reason": reason[:300], "seconds": round(wall, 2),
                              "trainer_rss_growth_mb": round(grew_mb, 1),
                              "counted": {"violations": stats.violations, "timeouts": stats.timeouts,
                                          "errors": stats.errors},
                              "contained": contained, "problems": host})  # fmt: skip
                print("." if contained else "E", end="", flush=True)
        # reward functions under a time budget: one bad answer must not hang or end the run
        sys.path.insert(0, str(out))
        (out / "probe_slow_rewards.py").write_text(SLOW_REWARDS)
        for eid, what, spec, comp, fields, limit in [
            ("math-power-tower", "math_answer on \\boxed{9**9**9}", RewardSpec(name="math_answer"),
             "The answer is \\boxed{9**9**9}", {"answer": ["1"]}, 15),
            ("reward-forever", "a user's reward that never returns (budget_s 2)",
             RewardSpec(name="probe_slow_rewards:forever", args={"budget_s": 2}), "x", {}, 8),
            ("reward-raises", "a user's reward that raises", RewardSpec(name="probe_slow_rewards:broken"),
             "x", {}, 5),
        ]:  # fmt: skip
            stats = R.RewardStats(max_samples=1)
            t0 = time.monotonic()
            from contextlib import redirect_stderr
            from io import StringIO

            try:
                with redirect_stderr(StringIO()):
                    total, _ = R.combine([spec], [[{"role": "user", "content": "q"}]], [comp],
                                         fields, stats)  # fmt: skip
                score, reason = total[0], (stats.reasons or [""])[0]
            except BaseException as e:  # noqa: BLE001
                score, reason = None, f"raised {type(e).__name__}: {e}"
            wall = time.monotonic() - t0
            host = [f"took {wall:.1f}s"] if wall > limit else []
            # a wrong answer scores 0 without a reason; a timeout or an error must say why
            contained = score == 0.0 and (bool(reason) or eid == "math-power-tower") and not host
            items.append({"id": eid, "backend": "reward budget", "what": what, "score": score,
                          "reason": reason[:300], "seconds": round(wall, 2),
                          "counted": {"violations": stats.violations, "timeouts": stats.timeouts,
                                      "errors": stats.errors},
                          "contained": contained, "problems": host})  # fmt: skip
            print("." if contained else "E", end="", flush=True)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        victim.kill()
        victim.wait()
        for s in (tcp, tcp_any, udp, unix):
            s.close()
        os.environ.pop("STROP_PROBE_SECRET", None)
    print()
    items += planted_pickles(L, out / "pickles", quick)
    return {"items": items, "backends_working": backends, "default_backend": default,
            "backend_problems": problems_found}  # fmt: skip


def planted_pickles(L: Launcher, d: Path, quick: bool) -> list[dict]:
    """A payload pickle planted in each file strop reads back that could hold one: resume must
    not run it (a checkpoint's RNG file and any DCP index), nor merge, generate or eval."""
    import torch  # torch.save of a plain object: no tensor op runs here

    from strop.hub import resolve_model

    d.mkdir(parents=True, exist_ok=True)
    pwned = d / "PWNED"
    items = []
    jsonl(d / "chat.jsonl", chat_rows(16, seed=9))
    write_yaml(d / "c.yaml", train_config("run", "chat.jsonl", "sft",
                                          train={"max_steps": 2, "save_every": 1, "keep_last": 2}))  # fmt: skip
    first = L.run(["train", "c.yaml"], d, d / "logs" / "first")

    def record(what: str, p: Proc | None, planted: list[str]) -> None:
        ran = pwned.exists()
        ok, lines = one_sentence(p.err) if p else (False, [])
        items.append({"id": "pickle-" + what.replace(" ", "-"), "backend": "files read back",
                      "sentence": ok, "traceback": "Traceback (most recent" in (p.err if p else ""),
                      "what": f"{what} (planted in: {', '.join(planted) or 'nothing'})",
                      "score": None, "reason": (lines[0] if lines else f"exit {p.rc if p else None}")[:300],
                      "exit": p.rc if p else None, "contained": bool(planted) and not ran,
                      "problems": (["the planted pickle ran"] if ran else [])
                      + ([] if planted else ["nothing to plant into"])})  # fmt: skip
        print("." if items[-1]["contained"] else "E", end="", flush=True)
        if ran:
            pwned.unlink()

    if first.rc == 0:
        ck = d / "run" / "checkpoints" / "step-2"
        planted = []
        for f in sorted(ck.iterdir()):
            if f.suffix in (".pt", ".pkl", ".pickle") or f.name == ".metadata":
                torch.save(Payload(pwned), f) if f.suffix == ".pt" else f.write_bytes(
                    __import__("pickle").dumps(Payload(pwned)))  # fmt: skip
                planted.append(f.name)
        p = L.run(["train", "c.yaml", "train.max_steps=3"], d, d / "logs" / "resume")
        record("resume from a checkpoint", p, planted)
    else:
        items.append({"id": "pickle-resume", "backend": "files read back", "what": "resume",
                      "contained": False, "problems": [f"first run exit {first.rc}"]})  # fmt: skip
    base = Path(resolve_model("tiny-llama"))
    # a model dir whose weights are a pickle: merge, eval, generate
    model = d / "pickled-model"
    model.mkdir(exist_ok=True)
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, model)
    torch.save(Payload(pwned), model / "pytorch_model.bin")
    write_yaml(d / "mg.yaml", {"method": "linear", "models": [str(base), "pickled-model"],
                               "output": {"dir": "mout"}})  # fmt: skip
    record(
        "merge input model",
        L.run(["merge", "mg.yaml"], d, d / "logs" / "merge"),
        ["pickled-model/pytorch_model.bin"],
    )
    jsonl(d / "gen.jsonl", [{"prompt": "hi"}])
    record("generate model", L.run(["generate", "-i", "gen.jsonl", "-o", "g.jsonl", "-m",
                                    "./pickled-model", "--max-new-tokens", "2"], d,
                                   d / "logs" / "gen-model"), ["pickled-model/pytorch_model.bin"])  # fmt: skip
    write_yaml(d / "e.yaml", {"models": {"m": "./pickled-model"}, "output_dir": "eout",
                              "tasks": [{"name": "ppl", "type": "perplexity", "data": "chat.jsonl",
                                         "limit": 2}]})  # fmt: skip
    record(
        "eval model",
        L.run(["eval", "e.yaml"], d, d / "logs" / "eval"),
        ["pickled-model/pytorch_model.bin"],
    )
    # an adapter whose weights are a pickle
    adapter = d / "pickled-adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base),
        "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}))  # fmt: skip
    torch.save(Payload(pwned), adapter / "adapter_model.bin")
    record("generate adapter", L.run(["generate", "-i", "gen.jsonl", "-o", "g2.jsonl", "-m",
                                      "tiny-llama", "-a", "pickled-adapter", "--max-new-tokens", "2"],
                                     d, d / "logs" / "gen-adapter"), ["pickled-adapter/adapter_model.bin"])  # fmt: skip
    write_yaml(d / "e2.yaml", {"models": {"m": {"model": "tiny-llama", "adapter": "pickled-adapter"}},
                               "output_dir": "eout2", "tasks": [{"name": "ppl", "type": "perplexity",
                               "data": "chat.jsonl", "limit": 2}]})  # fmt: skip
    record(
        "eval adapter",
        L.run(["eval", "e2.yaml"], d, d / "logs" / "eval-adapter"),
        ["pickled-adapter/adapter_model.bin"],
    )
    print()
    return items


# =============================================================================================
# Tables, totals, main
# =============================================================================================
def _table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([f"\n{title}", line(header), sep, *map(line, cells[1:])])


def summarise(results: dict) -> dict:
    summary: dict = {}
    if "faults" in results:
        rows = {}
        for it in results["faults"]["items"]:
            key = it["class"] + (f" ({it['stage']})" if it["class"] == "kill/SIGTERM" else "")
            r = rows.setdefault(key, {"tried": 0, "survived": 0, "not_tried": 0})
            tried = it.get("tried", True) and it.get("fired", True)
            r["tried" if tried else "not_tried"] += 1
            r["survived"] += bool(it["survived"])
        summary["faults"] = rows
    if "inputs" in results:
        rows = {}
        for it in results["inputs"]["items"]:
            key = "valid published layouts" if it["expect"] == "accept" else it["verb"]
            r = rows.setdefault(key, {"tried": 0, "clear": 0, "handled": 0, "accepted": 0,
                                      "traceback": 0, "silent": 0, "other": 0})  # fmt: skip
            r["tried"] += 1
            r[it["verdict"]] += 1
        summary["inputs"] = rows
    if "sandbox" in results:
        rows = {}
        for it in results["sandbox"]["items"]:
            r = rows.setdefault(it["backend"], {"tried": 0, "contained": 0, "escaped": 0})
            r["tried"] += 1
            r["contained" if it["contained"] else "escaped"] += 1
        summary["sandbox"] = rows
    return summary


def print_tables(results: dict, summary: dict) -> None:
    if "faults" in summary:
        rows = [[k, v["tried"], v["survived"], v["tried"] - v["survived"], v["not_tried"]]
                for k, v in summary["faults"].items()]  # fmt: skip
        tot = [sum(r[i] for r in rows) for i in range(1, 5)]
        print(_table("Faults", ["class", "tried", "survived", "failed", "not tried"],
                     rows + [["total", *tot]]))  # fmt: skip
        for it in results["faults"]["items"]:
            if not it["survived"]:
                print(f"  NOT SURVIVED: {it.get('stage', '')} {it['what']}: {it['problems']}")
    if "inputs" in summary:
        keys = ["tried", "clear", "handled", "accepted", "traceback", "silent", "other"]
        rows = [[k, *(v[x] for x in keys)] for k, v in summary["inputs"].items()]
        mistakes = [r for r in rows if r[0] != "valid published layouts"]
        tot = [sum(r[i] for r in mistakes) for i in range(1, len(keys) + 1)]
        print(_table("Bad inputs", ["verb", *keys], rows + [["total (mistakes)", *tot]]))
        for it in results["inputs"]["items"]:
            if it["verdict"] in ("traceback", "silent", "other"):
                print(f"  {it['verdict'].upper()}: {it['id']} ({it['what']}): {it['command']}\n"
                      f"      -> exit {it['exit']}: {it['note']}")  # fmt: skip
    if "sandbox" in summary:
        rows = [
            [k, v["tried"], v["contained"], v["escaped"]] for k, v in summary["sandbox"].items()
        ]
        tot = [sum(r[i] for r in rows) for i in range(1, 4)]
        print(
            _table("Sandbox", ["where", "tried", "contained", "escaped"], rows + [["total", *tot]])
        )
        for it in results["sandbox"]["items"]:
            if not it["contained"]:
                print(f"  ESCAPED/NOT CONTAINED: {it['backend']} {it['id']}: score {it.get('score')}, "
                      f"reason {it.get('reason')!r}, {it['problems']}")  # fmt: skip
            elif it.get("traceback"):
                print(
                    f"  CONTAINED, BUT A TRACEBACK INSTEAD OF A SENTENCE: {it['id']}: {it['what']}"
                )


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout  # noqa: E731
    import torch

    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "torch": torch.__version__,
            "euid": os.geteuid(), "bwrap": shutil.which("bwrap"),
            "git_head": git("rev-parse", "--short", "HEAD").strip(),
            "git_dirty": [x[3:] for x in git("status", "--porcelain", "--", "src").splitlines()]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset of each class (2-5 min)")
    ap.add_argument("--only", default="faults,inputs,sandbox", help="comma-separated classes")
    ap.add_argument("--spawn", action="store_true", help="a fresh `python -m strop.cli` per run")
    ap.add_argument("--seed", type=int, default=18, help="seeds where the faults land")
    ap.add_argument("--jobs", type=int, default=2, help="bad-input runs at a time")
    ap.add_argument("--cases", default="", help="inputs: only these case ids (comma-separated)")
    ap.add_argument(
        "--workdir", default=None, help="kept after the run (default: a temp dir, removed)"
    )
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="where the results go")
    args = ap.parse_args()
    classes = [c.strip() for c in args.only.split(",") if c.strip()]
    work = Path(args.workdir or f"/tmp/strop-reliability-{os.getpid()}").resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.monotonic()
    info = machine()  # imports torch here; no op runs before the forks
    L = Launcher(spawn=args.spawn)
    mode = "spawn" if args.spawn else "fork"
    print(f"reliability probe: {', '.join(classes)}; {'quick' if args.quick else 'full'}; "
          f"runs {mode}ed; seed {args.seed}; work dir {work}\n  {info}", flush=True)  # fmt: skip
    results: dict = {}
    rng = random.Random(args.seed)
    try:
        # The sandbox class first: it runs no torch op either, and its listeners are closed
        # before any CLI run is forked.
        if "sandbox" in classes:
            print("sandbox:", flush=True)
            results["sandbox"] = sandbox_class(L, work, args.quick)
        if "faults" in classes:
            mount_why = mount_works(work)
            print(f"faults (tmpfs mounts: {mount_why or 'yes'}):", flush=True)
            results["faults"] = faults_class(L, work, rng, args.quick, mount_why)
            results["faults"]["mount"] = mount_why or "works"
        if "inputs" in classes:
            print("inputs:", flush=True)
            results["inputs"] = inputs_class(L, work, args.quick, args.jobs, args.cases)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(results)
    print_tables(results, summary)
    seconds = time.monotonic() - t0
    print(f"\n{L.count} CLI runs, {seconds / 60:.1f} min")
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "quick": args.quick,
           "launch": mode, "seed": args.seed, "machine": info, "seconds": round(seconds),
           "cli_runs": L.count, "summary": summary, **results}  # fmt: skip
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
