"""report.json + report.md + lengths.png: what each step kept, changed and removed, and why.

Lengths are counted into fixed, log-spaced character bins as records stream past, so the
histograms cost the same memory for ten records or a billion.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np

# 0, then 48 log-spaced edges from 1 to 10^6 characters (8 per decade), deduplicated
LENGTH_EDGES: list[int] = [0, *np.unique(np.round(np.logspace(0, 6, 49)).astype(int)).tolist()]


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(LENGTH_EDGES)  # the last bin is open-ended

    def add(self, n: int) -> None:
        self.counts[bisect.bisect_right(LENGTH_EDGES, n) - 1] += 1

    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> int:
        """The lower edge of the bin holding the q-quantile (an approximation by design)."""
        target, run = q * self.total(), 0
        for edge, c in zip(LENGTH_EDGES, self.counts, strict=True):
            run += c
            if run >= target and c:
                return edge
        return 0


def step_entry(stats: Any, extra: dict[str, Any]) -> dict[str, Any]:
    work = stats.seconds + stats.decide_seconds
    out = {
        "step": stats.name,
        "in": stats.into,
        "kept": stats.kept,
        "changed": stats.changed,
        "removed": stats.removed,
        "added": stats.added,
        "out": stats.kept + stats.changed + stats.added,
        "rules": dict(sorted(stats.rules.items())),
        "notes": dict(sorted(stats.notes.items())),
        "seconds": round(stats.seconds, 3),
        "decide_seconds": round(stats.decide_seconds, 3),
        "records_per_s": round(stats.into / work) if work > 0 else None,
    }
    out.update(extra)
    return out


def _lengths_md(before: Histogram, after: Histogram) -> list[str]:
    lines = ["| characters per record | p10 | p50 | p90 | p99 |", "|---|---|---|---|---|"]
    for name, h in (("before", before), ("after", after)):
        qs = " | ".join(f"≥{h.quantile(q)}" for q in (0.1, 0.5, 0.9, 0.99))
        lines.append(f"| {name} ({h.total()} records) | {qs} |")
    return lines


def _step_md(s: dict[str, Any]) -> list[str]:
    lines = [f"### {s['step']}", ""]
    if s["rules"]:
        lines += ["| rule | records |", "|---|---|"]
        lines += [f"| {rule} | {n} |" for rule, n in s["rules"].items()]
        lines.append("")
    if s["notes"]:
        shown = list(s["notes"].items())[:30]
        lines.append("Counts: " + ", ".join(f"{k} {v}" for k, v in shown))
        if len(s["notes"]) > 30:
            lines.append(f"... and {len(s['notes']) - 30} more in report.json")
        lines.append("")
    for cluster in s.get("example_clusters", []):
        kept = cluster["kept"]
        lines.append(f"- kept `{kept['origin']}`: {kept['preview']!r}")
        for r in cluster["removed"]:
            sim = f" (~{r['similarity']:.2f})" if r.get("similarity") is not None else ""
            lines.append(f"  - removed `{r['origin']}`{sim}: {r['preview']!r}")
    if s.get("example_clusters"):
        lines.append("")
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    inp, out = report["input"], report["output"]
    lines = [
        "# strop prepare report",
        "",
        f"Read {inp['rows']} rows from {', '.join(inp['files'])}: {inp['records']} records, "
        f"{inp['bad_rows']} malformed rows quarantined.",
        f"Wrote {out['records']} records ({', '.join(f'{k}: {v}' for k, v in out['files'].items())}); "
        f"{report['quarantined']} entries in {report['quarantine_file']}.",
        "",
        "| step | in | kept | changed | removed | added | out | records/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        lines.append(
            f"| {s['step']} | {s['in']} | {s['kept']} | {s['changed']} | {s['removed']} | "
            f"{s['added']} | {s['out']} | {s['records_per_s'] or '-'} |"
        )
    lines += ["", "## Lengths", "", *_lengths_md(report["_before"], report["_after"]), ""]
    lines += ["![lengths](lengths.png)", "", "## Steps", ""]
    for s in report["steps"]:
        lines += _step_md(s)
    if out.get("split"):
        lines += ["## Split", "", json.dumps(out["split"], ensure_ascii=False), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot_lengths(before: Histogram, after: Histogram, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray([*LENGTH_EDGES, LENGTH_EDGES[-1] * 2], dtype=float)
    edges[0] = 0.5  # log axis: the empty bin sits just left of 1
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for h, label in ((before, "before"), (after, "after")):
        ax.stairs(h.counts, edges, label=f"{label} ({h.total()})", linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("characters per record")
    ax.set_ylabel("records")
    ax.legend()
    ax.set_title("Record lengths before and after prepare")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(report: dict[str, Any], path: Path) -> None:
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    path.write_text(json.dumps(public, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
