"""Class 1, continued: the quickstart script stopped with Ctrl-C and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .runner import ROOT, _read


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
        cmd = [
            sys.executable,
            "examples/events/quickstart.py",
            "--eval-n",
            "1",
            "model.name=tiny-llama",
            f"data.train={d / 'train.jsonl'}",
            "data.eval=null",
            f"train.output_dir={run}",
            "train.max_steps=40",
            "train.precision=fp32",
            "train.batch_size=1",
            "train.progress=false",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
        env.pop("STROP_DEBUG", None)
        out, err = d / f"{sig}.out", d / f"{sig}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            p = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        fired = False
        end = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < end:
            ready = (
                moment in _read(out)
                if moment != "metrics"
                else any(x.endswith("}") for x in _read(run / "metrics.jsonl").splitlines())
            )
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
            problems.append(
                f"exit {p.returncode} (want {want}), last stderr line {last!r}"
                + ("; a traceback" if "Traceback" in text else "")
            )
        items.append(
            {
                "class": "quickstart interrupted",
                "stage": "sft",
                "what": f"{sig} to examples/events/quickstart.py {where}",
                "fired": fired,
                "exit": p.returncode,
                "stderr": [last],
                "survived": not problems,
                "problems": problems,
            }
        )
    return items
