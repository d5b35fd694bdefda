"""Training throughput, side by side: a plain transformers + peft loop, strop, and TRL.

Every configuration trains the same model on the same tokens (strop's own rendering of the
chat data, prompts masked) for the same number of sequences per micro-batch, each in a fresh
subprocess so peak memory is its own. See docs/performance.md for what is measured and how.

    .venv/bin/python benchmarks/train_throughput.py                  # smollm2-135m, fp32, 8 steps
    .venv/bin/python benchmarks/train_throughput.py --precision bf16 --steps 16
    .venv/bin/python benchmarks/train_throughput.py --tiny           # ~20 s smoke run

Configs: plain-full, plain-lora, strop-full, strop-lora, strop-full-shared, strop-lora-shared
(strop with data.share_prefix), trl-full, trl-lora (trl-* only when ``import trl`` works). Results: a table on stdout, benchmarks/results/train_throughput-<prec>.json
and a bar chart of target tokens/s next to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

from throughput_common import (
    ALL_CONFIGS,
    DEFAULT_CONFIGS,
    FLOPS_FORMULA,
    RESULTS,
    cpu_facts,
    cpu_line,
    measure_peak,
    run_worker,
)
from throughput_runners import run_plain, run_strop, run_trl


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    system, method, *variant = args.worker.split("-")
    if system == "strop":
        res = run_strop(args, method, share_prefix=variant == ["shared"])
    else:
        res = {"plain": run_plain, "trl": run_trl}[system](args, method)
    res["threads"] = torch.get_num_threads()
    Path(args.worker_out).write_text(json.dumps(res))


# --------------------------------------------------------------------------------------------
# Parent: machine peak, subprocesses, table, JSON, chart
# --------------------------------------------------------------------------------------------


def _spawn(args, config: str) -> dict:
    flags = {
        "--model": args.model,
        "--precision": args.precision,
        "--steps": args.steps,
        "--warmup": args.warmup,
        "--batch-size": args.batch_size,
        "--max-length": args.max_length,
        "--seed": args.seed,
        "--threads": args.threads,
    }
    return run_worker(__file__, config, flags)


def _ratio(results: dict, a: str, b: str) -> float | None:
    ra, rb = results.get(a, {}), results.get(b, {})
    if "target_tokens_per_s" in ra and "target_tokens_per_s" in rb:
        return ra["target_tokens_per_s"] / rb["target_tokens_per_s"]
    return None


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def _print_table(results: dict, peak: float, precision: str) -> None:
    headers = [
        "config",
        "s/step",
        "target tok/s",
        "real tok/s",
        "pad %",
        "GFLOP/s",
        f"MFU % ({precision})",
        "peak RSS MiB",
        "loss first→last",
    ]
    rows = []
    for name, r in results.items():
        if "error" in r or "skipped" in r:
            rows.append([name, r.get("skipped") or r["error"][:90]] + [""] * (len(headers) - 2))
            continue
        rows.append(
            [
                name,
                f"{r['seconds'] / r['steps_timed']:.3f}",
                _num(r["target_tokens_per_s"]),
                _num(r["real_tokens_per_s"]),
                f"{100 * r['pad_fraction']:.1f}",
                f"{r['gflops_per_s']:.1f}",
                f"{100 * r['gflops_per_s'] / peak:.1f}",
                f"{r['peak_rss_mib']:,.0f}",
                f"{r['losses'][0]:.3f}→{r['losses'][-1]:.3f}" if r["losses"] else "",
            ]
        )
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="training throughput")
        for i, h in enumerate(headers):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            t.add_row(*row)
        Console(width=200).print(t)
    except ImportError:
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
        for row in [headers, *rows]:
            print("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=False)))


def _chart(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if "target_tokens_per_s" in r]
    vals = [results[n]["target_tokens_per_s"] for n in names]
    colors = ["#4c72b0" if n.startswith("strop") else "#999999" for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, labels=[_num(v) for v in vals], fontsize=8)
    ax.set_ylabel("target tokens / s (higher is better)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model", default=None, help="default smollm2-135m-instruct (tiny-llama with --tiny)"
    )
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 8; 3 with --tiny)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 2; 1 tiny)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="sequences (strop: packed rows)")
    p.add_argument("--max-length", type=int, default=None, help="default 512 (2048 with --tiny)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated subset")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tiny", action="store_true", help="tiny-llama smoke run (seconds)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.model is None:
        args.model = "tiny-llama" if args.tiny else "smollm2-135m-instruct"
    if args.steps is None:
        args.steps = 2 if args.tiny else 8
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 2
    if args.max_length is None:
        # The tiny tokenizer is byte-level: a chat here is ~1,100 tokens.
        args.max_length = 2048 if args.tiny else 512
    if args.worker:
        worker(args)
        return 0

    import torch

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in ALL_CONFIGS]
    if bad:
        p.error(f"--configs: unknown {bad}; choose from {', '.join(ALL_CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    have_trl = importlib.util.find_spec("trl") is not None
    print(f"trl: {'installed' if have_trl else 'not installed'}")
    print(
        f"model {args.model}, precision {args.precision}, batch {args.batch_size} sequences, "
        f"max_length {args.max_length}, {args.warmup} warmup + {args.steps} timed steps, "
        f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs"
    )
    facts = cpu_facts()
    print(cpu_line(facts))
    n, secs = (1024, 0.5) if args.tiny else (2048, 2.0)
    peaks = {d: measure_peak(d, n, secs) for d in ("fp32", "bf16")}
    peak = peaks[args.precision]
    print(
        f"machine peak ({n}^3 matmul, best of ~{secs:g} s): fp32 {peaks['fp32']:.1f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.1f} GFLOP/s; MFU is against {args.precision}"
    )
    print(FLOPS_FORMULA)
    results: dict[str, dict] = {}
    for c in configs:
        if c.startswith("trl") and not have_trl:
            results[c] = {"skipped": "trl: not installed"}
            continue
        print(f"running {c} ...", flush=True)
        results[c] = _spawn(args, c)
        if "error" in results[c]:
            print(f"  {c} failed: {results[c]['error']}")
        elif results[c].get("target_mismatch"):
            print(f"  note: {c}: target-token replay disagrees with the loop's count")
    _print_table(results, peak, args.precision)
    ratios = {
        "strop-lora / plain-lora": _ratio(results, "strop-lora", "plain-lora"),
        "strop-full / plain-full": _ratio(results, "strop-full", "plain-full"),
        "strop-lora / strop-full": _ratio(results, "strop-lora", "strop-full"),
        "strop-lora / trl-lora": _ratio(results, "strop-lora", "trl-lora"),
        "strop-lora-shared / plain-lora": _ratio(results, "strop-lora-shared", "plain-lora"),
        "strop-lora-shared / strop-lora": _ratio(results, "strop-lora-shared", "strop-lora"),
        "strop-lora-shared / strop-full-shared": _ratio(
            results, "strop-lora-shared", "strop-full-shared"
        ),
    }
    for name, r in results.items():
        if r.get("shared_fraction"):
            print(f"{name}: {100 * r['shared_fraction']:.1f}% of real tokens shared, not computed")
    for k, v in ratios.items():
        if v is not None:
            print(f"target tokens/s  {k}: {v:.2f}x")
    suffix = "-tiny" if args.tiny else ""
    out = (
        Path(args.out) if args.out else RESULTS / f"train_throughput-{args.precision}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "precision": args.precision,
        "batch_size_sequences": args.batch_size,
        "max_length": args.max_length,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        **facts,
        "torch": torch.__version__,
        "peak_gflops": peaks,
        "flops_formula": FLOPS_FORMULA,
        "ratios_target_tokens_per_s": ratios,
        "results": results,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.write_text(json.dumps(report, indent=2))
    png = out.with_suffix(".png")
    _chart(
        results,
        png,
        f"{args.model} {args.precision}, batch {args.batch_size}, {args.steps} steps",
    )
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
