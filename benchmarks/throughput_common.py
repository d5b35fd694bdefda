"""Shared pieces of the throughput benchmark: constants, the machine peak, model shapes,
token and FLOP accounting, and the result record."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "examples" / "events" / "train.jsonl"
ALL_CONFIGS = [
    "plain-full",
    "plain-lora",
    "strop-full",
    "strop-lora",
    "strop-full-shared",  # data.share_prefix: the common system prompt computed once
    "strop-lora-shared",
    "trl-full",
    "trl-lora",
]
DEFAULT_CONFIGS = ",".join(ALL_CONFIGS)
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
        "pad_fraction": max(0.0, 1 - agg["real"] / max(agg["slots"], 1)),
        # real tokens never computed: a shared prefix's copies (data.share_prefix)
        "shared_fraction": max(0.0, 1 - agg["slots"] / max(agg["real"], 1)),
        "losses": losses,
        "target_mismatch": any(s.get("target_mismatch") for s in stats),
        "peak_rss_mib": peak_rss_mib(),
        **shape,
    }


def run_worker(script: str, worker: str, flags: dict, show_stderr: bool = False) -> dict:
    """Run ``script --worker WORKER --worker-out TMP --flag value ...`` in a fresh process (so
    its peak memory is its own) and return the JSON it wrote, plus ``process_wall_s``; or
    ``{"error": ...}``. ``flags``: option -> value (True adds a bare flag, False/None skips).
    ``show_stderr`` streams the worker's stderr (progress, tracebacks) instead of capturing it."""
    import json
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, script, "--worker", worker, "--worker-out", out]
    for flag, value in flags.items():
        if value is True:
            cmd.append(flag)
        elif value not in (False, None):
            cmd += [flag, str(value)]
    t0 = time.perf_counter()
    stderr = None if show_stderr else subprocess.PIPE
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-8:]
            detail = " | ".join(tail) if tail else "its traceback is above"
            return {"error": f"exit {proc.returncode}: {detail}"}
        res = json.loads(Path(out).read_text())
        res["process_wall_s"] = wall
        return res
    finally:
        Path(out).unlink(missing_ok=True)


def cpu_facts() -> dict:
    """What the CPU kernels run with, for every benchmark table: model, cores torch uses, and
    the instruction sets that decide fp32 vs bf16 speed (AVX-512, AVX512-BF16, AMX)."""
    import platform

    import torch

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    has = {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}
    return {
        "cpu": model,
        "threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **has,
    }


def cpu_line(facts: dict) -> str:
    yes = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if facts.get(f)]
    return (
        f"CPU: {facts['cpu']}, {facts['threads']} threads, torch kernels "
        f"{facts['torch_cpu_capability']}; flags: {', '.join(yes) or 'none of'} "
        f"(of avx2, avx512f, avx512_bf16, amx_bf16)"
    )
