"""The "what was lost" report section: general-ability tasks, baseline vs every other model.

Tasks marked ``general: true`` (or named in the top-level ``forgetting:`` list) measure ability
the fine-tune was not aiming at; a significant drop there is catastrophic forgetting. For each
such task, metric and model the section shows baseline value, model value and the delta with
its paired-bootstrap CI, oriented so that "worse" is a loss whichever way the metric points
(lower loss / perplexity / bits per byte is better). A change is **lost** when the whole CI
lies on the worse side of 0, *worse (noise)* when the delta is worse but the CI includes 0.
"""

from __future__ import annotations

LOWER_IS_BETTER = {"loss", "ppl", "bits_per_byte", "loss_rate"}


def general_tasks(cfg) -> list[str]:
    listed = set(cfg.forgetting or [])
    return [t.name for t in cfg.tasks if t.general or t.name in listed]


def verdict(metric: str, delta: float, lo: float, hi: float) -> str:
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # + = better
    d, a, b = sign * delta, sorted((sign * lo, sign * hi))[0], sorted((sign * lo, sign * hi))[1]
    if d != d:
        return "n/a"
    if b < 0:
        return "lost"
    if a > 0:
        return "gained"
    return "worse (noise)" if d < 0 else "no significant change"


def forgetting_summary(cfg, results: dict) -> dict:
    """``{task: {model: {metric: {baseline, value, delta, ci95, verdict}}}}``."""
    base = cfg.baseline
    out: dict = {}
    for task in general_tasks(cfg):
        t = results["tasks"][task]
        for model, deltas in t["deltas"].items():
            for metric, d in deltas.items():
                lo, hi = d["ci95"]
                out.setdefault(task, {}).setdefault(model, {})[metric] = {
                    "baseline": t["results"][base][metric]["value"],
                    "value": t["results"][model][metric]["value"],
                    "delta": d["delta"],
                    "ci95": [lo, hi],
                    "verdict": verdict(metric, d["delta"], lo, hi),
                }
    return out


def render_forgetting(cfg, summary: dict, fmt, signed) -> list[str]:
    """Markdown lines of the section (empty when no task is marked general)."""
    tasks = general_tasks(cfg)
    if not tasks:
        return []
    lines = ["", "## What was lost (general-ability tasks)", ""]
    if len(cfg.models) < 2:
        return [*lines, "Needs a second model to compare with the baseline.", ""]
    lines += [
        f"Baseline **{cfg.baseline}** against each other model on {', '.join(tasks)}. "
        "**lost**: the whole 95% CI is on the worse side of 0 (lower is better for loss, ppl "
        "and bits_per_byte; higher for everything else).",
        "",
        "| task | metric | model | baseline | model value | delta [95% CI] | verdict |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    lost = 0
    for task, per_model in summary.items():
        for model, metrics in per_model.items():
            for metric, r in metrics.items():
                lo, hi = r["ci95"]
                cell = f"{signed(r['delta'])} [{signed(lo)}, {signed(hi)}]"
                v = r["verdict"]
                if v == "lost":
                    lost += 1
                    cell, v = f"**{cell}**", "**lost**"
                lines.append(
                    f"| {task} | {metric} | {model} | {fmt(r['baseline'])} | {fmt(r['value'])} "
                    f"| {cell} | {v} |"
                )
    lines += ["", f"{lost} significant loss(es)." if lost else "No significant loss.", ""]
    return lines
