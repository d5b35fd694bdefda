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

The code is the package benchmarks/reliability/ (runner, fixtures, faults, inputs_*, sandbox,
report, ...); this file parses the options and runs the classes.
"""

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from reliability.disk_full import mount_works
from reliability.faults import faults_class
from reliability.inputs import inputs_class
from reliability.report import machine, print_tables, summarise
from reliability.runner import ROOT, Launcher
from reliability.sandbox import sandbox_class

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "reliability.json"


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
    print(
        f"reliability probe: {', '.join(classes)}; {'quick' if args.quick else 'full'}; "
        f"runs {mode}ed; seed {args.seed}; work dir {work}\n  {info}",
        flush=True,
    )
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
    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "launch": mode,
        "seed": args.seed,
        "machine": info,
        "seconds": round(seconds),
        "cli_runs": L.count,
        "summary": summary,
        **results,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
