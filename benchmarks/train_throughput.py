"""Training throughput, side by side: a plain transformers + peft loop, strop, and TRL.

Every configuration trains the same model on the same tokens (strop's own rendering of the
chat data, prompts masked) for the same number of sequences per micro-batch, each in a fresh
subprocess so peak memory is its own. See docs/performance.md for what is measured and how.

    .venv/bin/python benchmarks/train_throughput.py                  # smollm2-135m, fp32, 8 steps
    .venv/bin/python benchmarks/train_throughput.py --precision bf16 --steps 16
    .venv/bin/python benchmarks/train_throughput.py --tiny           # ~20 s smoke run

Configs: plain-full, plain-lora, strop-full, strop-lora, trl-full, trl-lora (trl-* only when
``import trl`` works). Results: a table on stdout, benchmarks/results/train_throughput-<prec>.json
and a bar chart of target tokens/s next to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "examples" / "events" / "train.jsonl"
ALL_CONFIGS = ["plain-full", "plain-lora", "strop-full", "strop-lora", "trl-full", "trl-lora"]
DEFAULT_CONFIGS = "plain-full,plain-lora,strop-full,strop-lora,trl-full,trl-lora"
IGNORE = -100

FLOPS_FORMULA = (
    "FLOPs/step = sum over the step's real tokens of k*N + sum over its documents of "
    "12*L*d*T_doc^2;  k = 6 (full: fwd 2N + bwd 4N) or 4 (LoRA: frozen weights get no weight "
    "gradient);  N = parameters of every matmul weight incl. the LM head (embedding lookup "
    "excluded);  L = layers, d = n_heads*head_dim, T_doc = the document's own length (padding "
    "and cross-document attention never count). Nominal model FLOPs: work a system skips "
    "(strop's LM head at non-target positions) is still credited."
)


# --------------------------------------------------------------------------------------------
# Shared helpers (both the parent and the workers)
# --------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


def measure_peak(dtype_name: str, n: int = 2048, seconds: float = 2.0) -> float:
    """Best observed GFLOP/s of an n x n x n matmul in ``dtype_name`` on this machine."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b  # warm up (thread pool, kernel selection)
    best, t_end = float("inf"), time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return 2 * n**3 / best / 1e9


def model_shape(name: str) -> dict:
    """Matmul parameter count N (every Linear weight incl. the LM head, tied or not), L and d.

    Built on the meta device from the config: no weights are loaded, so peak RSS is untouched."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from strop.hub import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    seen, n_matmul = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n_matmul += m.weight.numel()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "n_matmul_params": n_matmul,
        "n_params": sum(p.numel() for p in model.parameters()),
        "layers": cfg.num_hidden_layers,
        "attn_dim": cfg.num_attention_heads * head_dim,
    }


def doc_stats(docs: list[tuple[list[int], list[int]]]) -> dict:
    """Real tokens, target tokens and sum of T_doc^2 for (input_ids, labels) documents.

    A target is a label != -100 at positions 1.. of its own document (the token at a
    document's start is never predicted: plain HF shifts it away, strop masks it)."""
    real = sum(len(ids) for ids, _ in docs)
    targets = sum(sum(1 for y in labels[1:] if y != IGNORE) for _, labels in docs)
    sq = sum(len(ids) ** 2 for ids, _ in docs)
    return {"real": real, "targets": targets, "t2": sq}


def step_flops(stats: dict, shape: dict, lora: bool) -> float:
    k = 4 if lora else 6
    return (
        k * shape["n_matmul_params"] * stats["real"]
        + 12 * shape["layers"] * shape["attn_dim"] * stats["t2"]
    )


# --------------------------------------------------------------------------------------------
# Workers: one configuration per process
# --------------------------------------------------------------------------------------------


def _strop_cfg(args, method: str, out_dir: str, steps: int):
    from strop.config import load_config

    m = {"name": method}
    if method == "lora":
        m.update({"r": 16, "alpha": 32, "targets": "all-linear"})
    raw = {
        "model": {"name": args.model},
        "method": m,
        "data": {
            "train": str(DATA),
            "eval": None,
            "max_length": args.max_length,
            "packing": True,
            "mask": "assistant",
        },
        "train": {
            "output_dir": out_dir,
            "max_steps": steps,
            "batch_size": args.batch_size,
            "grad_accum": 1,
            "lr": 1e-5 if method == "full" else 2e-4,
            "precision": args.precision,
            "progress": False,
            "tensorboard": False,
            "save_every": 0,
            "eval_every": 0,
            "log_every": 1,
            "seed": args.seed,
            "resume": "never",
        },
    }
    return load_config(None, raw=raw)


def _samples(args):
    """The rendered samples (identical for every system) and the tokenizer."""
    from strop.data.dataset import build_datasets
    from strop.hub import resolve_model
    from strop.models.load import load_tokenizer

    cfg = _strop_cfg(args, "lora", "unused", 1)
    tok = load_tokenizer(resolve_model(args.model))
    data = build_datasets(cfg.data, "sft", tok, args.seed)
    return data.train.samples, tok


def _plain_batches(samples, args):
    """Batches of ``batch_size`` samples in a seeded shuffled order (wrapping around)."""
    import torch

    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(args.seed))
    order = order.tolist()
    total = args.warmup + args.steps
    need = total * args.batch_size
    idx = [order[i % len(order)] for i in range(need)]
    return [
        [samples[j] for j in idx[s * args.batch_size : (s + 1) * args.batch_size]]
        for s in range(total)
    ]


def _collate_padded(batch, pad_id: int):
    """Right-pad to the longest sample in the batch; labels -100 on prompt and padding."""
    import torch

    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(batch):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(s.labels)
    return ids, mask, labels


def run_plain(args, method: str) -> dict:
    """What a typical user writes: HF model (+ peft LoRA), padded batches, .loss, AdamW."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from strop.hub import resolve_model
    from strop.models.load import quiet_transformers

    samples, tok = _samples(args)
    quiet_transformers()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    shape = model_shape(args.model)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5 if method == "full" else 2e-4)
    times, stats, losses = [], [], []
    for batch in _plain_batches(samples, args):
        t0 = time.perf_counter()
        ids, mask, labels = _collate_padded(batch, tok.pad_token_id)
        bf16 = args.precision == "bf16"
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        s = doc_stats([(x.input_ids, x.labels) for x in batch])
        s["slots"] = ids.numel()
        stats.append(s)
    return _result(args, method, shape, times, stats, losses, timing="per-step perf_counter")


def run_strop(args, method: str) -> dict:
    """strop.train.loop.train with packing and the default objective.

    Timing: with train.log_every=1 the loop stores target_tokens_per_s in every history record,
    measured with perf_counter between consecutive steps, so each step's wall time is exactly
    (target tokens of the step) / target_tokens_per_s. The first ``warmup`` steps are dropped.
    Model load, data rendering and the final save happen outside those intervals."""
    from strop.data.batching import ShardedSampler, collate
    from strop.data.dataset import build_datasets
    from strop.hub import resolve_model
    from strop.models.load import load_tokenizer
    from strop.train.loop import train

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="strop-bench-") as tmp:
        cfg = _strop_cfg(args, method, tmp, total)
        result = train(cfg)
    hist = result.history
    rss = peak_rss_mib()
    deltas = [
        b["tokens"] - a for a, b in zip([0] + [h["tokens"] for h in hist], hist, strict=False)
    ]
    times = [n / rec["target_tokens_per_s"] for n, rec in zip(deltas, hist, strict=True)]
    losses = [rec["loss"] for rec in hist]
    # Replay the loop's sampler over the same packed rows to count real tokens per step.
    tok = load_tokenizer(resolve_model(args.model))
    rows = build_datasets(cfg.data, "sft", tok, cfg.train.seed).train.rows
    sampler = ShardedSampler(len(rows), cfg.train.batch_size, cfg.train.seed)
    stats = []
    for n_targets in deltas:
        step_rows = [rows[j] for j in sampler.next_step()]
        docs = []
        for r in step_rows:
            at = 0
            for n in r.doc_lens:
                docs.append((r.input_ids[at : at + n], r.labels[at : at + n]))
                at += n
        s = doc_stats(docs)
        # The token slots strop's own collate builds (rows laid end to end under the default
        # per-document attention: no padding).
        s["slots"] = collate(step_rows, tok.pad_token_id)["input_ids"].numel()
        s["docs"] = len(docs)
        s["target_mismatch"] = s["targets"] != n_targets
        stats.append(s)
    res = _result(args, method, model_shape(args.model), times, stats, losses, "loop history")
    res["peak_rss_mib"] = rss
    return res


def run_trl(args, method: str) -> dict:
    """TRL SFTTrainer on the same pre-tokenised samples (completion mask = strop's labels)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from strop.hub import resolve_model
    from strop.models.load import quiet_transformers

    samples, tok = _samples(args)
    batches = _plain_batches(samples, args)
    flat = [s for b in batches for s in b]
    ds = Dataset.from_list(
        [
            {
                "input_ids": s.input_ids,
                "completion_mask": [int(y != IGNORE) for y in s.labels],
            }
            for s in flat
        ]
    )
    quiet_transformers()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    shape = model_shape(args.model)
    peft_config = None
    if method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as tmp:
        conf = SFTConfig(
            output_dir=tmp,
            max_steps=total,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            learning_rate=1e-5 if method == "full" else 2e-4,
            max_length=args.max_length,
            packing=False,
            completion_only_loss=True,
            bf16=args.precision == "bf16",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=args.seed,
            data_seed=args.seed,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=conf,
            train_dataset=ds,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[Stamp()],
        )
        trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # The trainer shuffles; step contents are approximated by the same-sized batches in order.
    stats = [doc_stats([(x.input_ids, x.labels) for x in b]) for b in batches]
    for s, b in zip(stats, batches, strict=False):
        s["slots"] = len(b) * max(len(x.input_ids) for x in b)
    return _result(args, method, shape, times, stats, losses, timing="TrainerCallback stamps")


def _result(args, method, shape, times, stats, losses, timing) -> dict:
    w = args.warmup
    timed_t, timed_s = times[w:], stats[w:]
    secs = sum(timed_t)
    agg = {k: sum(s[k] for s in timed_s) for k in ("real", "targets", "t2", "slots")}
    flops = sum(step_flops(s, shape, method == "lora") for s in timed_s)
    return {
        "method": method,
        "timing": timing,
        "steps_timed": len(timed_t),
        "warmup_steps": w,
        "step_seconds": times,
        "seconds": secs,
        "real_tokens": agg["real"],
        "target_tokens": agg["targets"],
        "token_slots": agg["slots"],
        "flops": flops,
        "target_tokens_per_s": agg["targets"] / secs,
        "real_tokens_per_s": agg["real"] / secs,
        "gflops_per_s": flops / secs / 1e9,
        "pad_fraction": 1 - agg["real"] / max(agg["slots"], 1),
        "losses": losses,
        "target_mismatch": any(s.get("target_mismatch") for s in stats),
        "peak_rss_mib": peak_rss_mib(),
        **shape,
    }


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    system, method = args.worker.split("-")
    run = {"plain": run_plain, "strop": run_strop, "trl": run_trl}[system]
    res = run(args, method)
    res["threads"] = torch.get_num_threads()
    Path(args.worker_out).write_text(json.dumps(res))


# --------------------------------------------------------------------------------------------
# Parent: machine peak, subprocesses, table, JSON, chart
# --------------------------------------------------------------------------------------------


def _spawn(args, config: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        config,
        "--worker-out",
        out,
        "--model",
        args.model,
        "--precision",
        args.precision,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
        res = json.loads(Path(out).read_text())
        res["process_wall_s"] = wall
        return res
    finally:
        Path(out).unlink(missing_ok=True)


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
    }
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
