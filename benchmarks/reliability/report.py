"""Tables, totals and the machine the probe ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess

from .runner import ROOT


def _table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

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
            r = rows.setdefault(
                key,
                {
                    "tried": 0,
                    "clear": 0,
                    "handled": 0,
                    "accepted": 0,
                    "traceback": 0,
                    "silent": 0,
                    "other": 0,
                },
            )
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
        rows = [
            [k, v["tried"], v["survived"], v["tried"] - v["survived"], v["not_tried"]]
            for k, v in summary["faults"].items()
        ]
        tot = [sum(r[i] for r in rows) for i in range(1, 5)]
        print(
            _table(
                "Faults",
                ["class", "tried", "survived", "failed", "not tried"],
                rows + [["total", *tot]],
            )
        )
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
                print(
                    f"  {it['verdict'].upper()}: {it['id']} ({it['what']}): {it['command']}\n"
                    f"      -> exit {it['exit']}: {it['note']}"
                )
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
                print(
                    f"  ESCAPED/NOT CONTAINED: {it['backend']} {it['id']}: score {it.get('score')}, "
                    f"reason {it.get('reason')!r}, {it['problems']}"
                )
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

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout

    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "euid": os.geteuid(),
        "bwrap": shutil.which("bwrap"),
        "git_head": git("rev-parse", "--short", "HEAD").strip(),
        "git_dirty": [x[3:] for x in git("status", "--porcelain", "--", "src").splitlines()],
    }
