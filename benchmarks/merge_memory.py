"""Peak memory of `strop merge` vs the size of the models it merges.

Builds synthetic sharded models (a base and N fine-tunes of one shape: many large fp32
tensors, tiny-llama's tokenizer), then merges them in a child process and reports the child's
peak RSS (``resource.getrusage``) next to the model sizes. ``--limit-mb`` also caps the child's
address space (RLIMIT_AS) at its size after imports plus that many MB, so the merge *must* fit
in less memory than one model, let alone all of them. ``--cgroup-mb`` instead runs the child in
a Linux memory cgroup limited to that many MB in all (imports, tensors and page cache; the
kernel reclaims clean file pages and kills the process if it cannot): the real test of
"merges models larger than the memory it is allowed" (needs a writable cgroup v1 memory
controller or cgroup v2, e.g. root in a container). ``--naive`` runs the same merge the
obvious way for comparison: every state dict loaded, merged, saved in one piece.

    python benchmarks/merge_memory.py                                    # ties, 3 x 768 MB
    python benchmarks/merge_memory.py --limit-mb 600 --method dare_ties
    python benchmarks/merge_memory.py --naive
    python benchmarks/merge_memory.py --cgroup-mb 1024 --tensors 24   # 3 x 1.5 GB in 1 GB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def build_model(out: Path, seed: int, args: argparse.Namespace, tok_dir: Path) -> int:
    """A synthetic HF dir: ``args.tensors`` fp32 [rows, cols] tensors in shards. Returns bytes."""
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    per_shard = max(1, (args.shard_mb << 20) // (args.rows * args.cols * 4))
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(args.tensors)]
    shards = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: torch.randn(args.rows, args.cols, generator=g) * 0.02 for n in shard}
        save_file(tensors, out / fname, metadata={"format": "pt"})
        total += sum(t.numel() * 4 for t in tensors.values())
        weight_map.update(dict.fromkeys(shard, fname))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    cfg["num_hidden_layers"] = args.tensors
    (out / "config.json").write_text(json.dumps(cfg))
    for f in tok_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy(f, out / f.name)
    return total


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def vm_size_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1])
    return 0


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: imports, optional address-space cap, one merge, report."""
    import strop.merge.run as merge_run
    from strop.merge.config import load_merge_config

    work = Path(args.work)
    inputs = [str(work / f"model{i}") for i in range(1, args.models + 1)]
    tree = {
        "method": args.method,
        "base": str(work / "base"),
        "models": [{"model": m, "density": 0.5} for m in inputs],
        "output": {"dir": str(work / "out"), "overwrite": True, "shard_size": args.shard_mb << 20},
    }
    if args.method in ("task_arithmetic", "linear"):
        tree["models"] = [{"model": m, "weight": 0.5} for m in inputs]
    if args.method in ("linear", "slerp"):
        tree.pop("base")
        tree["models"] = [t["model"] if args.method == "slerp" else t for t in tree["models"]]
    cfg, _, _ = load_merge_config(None, raw=tree)
    # Import (and warm) what the merge uses besides tensors, so the baseline holds the code.
    from strop.models.load import load_tokenizer

    load_tokenizer(work / "base")
    import safetensors  # noqa: F401
    import transformers  # noqa: F401

    baseline = vm_rss_kb()  # resident now; ru_maxrss would hold the imports' transient peak
    if args.limit_mb:
        cap = vm_size_kb() * 1024 + (args.limit_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    start = time.perf_counter()
    if args.naive:
        naive_merge(cfg, work)
    else:
        merge_run.run_merge(cfg, log=lambda m: None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"baseline_kb": baseline, "peak_kb": peak, "seconds": seconds}))


def naive_merge(cfg, work: Path) -> None:
    """The obvious way: every state dict in memory at once."""
    from safetensors.torch import load_file

    from strop.merge.run import merge_in_memory

    def load(d: Path) -> dict:
        sd = {}
        for f in sorted(d.glob("*.safetensors")):
            sd.update(load_file(f))
        return sd

    sds = [load(Path(m.model)) for m in cfg.models]
    base = load(Path(cfg.base)) if cfg.base else None
    merged = merge_in_memory(cfg, sds, base, n_layers=len(sds[0]))
    (work / "out").mkdir(exist_ok=True)
    save_file(merged, work / "out" / "model.safetensors", metadata={"format": "pt"})


class MemoryCgroup:
    """A memory cgroup (v1 or v2) limited to ``limit`` bytes; ``enter`` moves the calling
    process into it (used as the child's preexec_fn, so the limit holds from the child's first
    instruction)."""

    def __init__(self, limit: int):
        v1 = Path("/sys/fs/cgroup/memory")
        root = v1 if v1.is_dir() else Path("/sys/fs/cgroup")
        self.v1 = root == v1
        self.dir = root / f"strop-merge-bench-{os.getpid()}"
        try:
            self.dir.mkdir()
            name = "memory.limit_in_bytes" if self.v1 else "memory.max"
            (self.dir / name).write_text(str(limit))
            if not self.v1:
                (self.dir / "memory.swap.max").write_text("0")
        except OSError as exc:
            self.close()
            sys.exit(f"--cgroup-mb: cannot create a memory cgroup under {root} ({exc})")

    def enter(self) -> None:
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int:
        name = "memory.max_usage_in_bytes" if self.v1 else "memory.peak"
        path = self.dir / name
        return int(path.read_text()) if path.exists() else 0

    def close(self) -> None:
        if self.dir.exists():
            self.dir.rmdir()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default="/tmp/strop-merge-bench")
    p.add_argument("--method", default="ties")
    p.add_argument("--models", type=int, default=2, help="fine-tunes besides the base")
    p.add_argument("--tensors", type=int, default=12)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--shard-mb", type=int, default=256)
    p.add_argument("--limit-mb", type=int, default=0, help="RLIMIT_AS budget above imports")
    p.add_argument(
        "--cgroup-mb", type=int, default=0, help="run the child in a memory cgroup of this size"
    )
    p.add_argument("--naive", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    from strop.hub import resolve_model

    work = Path(args.work)
    tag = f"{args.models}x{args.tensors}x{args.rows}x{args.cols}"
    if (work / "tag").exists() and (work / "tag").read_text() == tag:
        model_bytes = sum(f.stat().st_size for f in (work / "base").glob("*.safetensors"))
    else:
        shutil.rmtree(work, ignore_errors=True)
        tok = resolve_model("tiny-llama")
        for i, name in enumerate(["base", *(f"model{k}" for k in range(1, args.models + 1))]):
            model_bytes = build_model(work / name, i, args, tok)
        (work / "tag").write_text(tag)
    cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
    group = MemoryCgroup(args.cgroup_mb << 20) if args.cgroup_mb else None
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, preexec_fn=group.enter if group else None
        )
        group_peak = group.peak_bytes() if group else 0
    finally:
        if group:
            group.close()
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        killed = " (killed: the memory limit was exceeded)" if proc.returncode == -9 else ""
        sys.exit(f"merge failed (exit {proc.returncode}){killed}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1 << 20
    largest = args.rows * args.cols * 4
    extra = (r["peak_kb"] - r["baseline_kb"]) * 1024
    rows = [
        ("method", args.method + (" (naive, all in memory)" if args.naive else " (streamed)")),
        (
            "inputs",
            f"base + {args.models} models, {args.tensors} x [{args.rows}, {args.cols}] fp32",
        ),
        ("one model", f"{model_bytes / mb:.0f} MB"),
        ("all inputs", f"{(args.models + 1) * model_bytes / mb:.0f} MB"),
        ("largest tensor", f"{largest / mb:.0f} MB"),
        ("address-space cap above imports", f"{args.limit_mb} MB" if args.limit_mb else "none"),
        ("memory cgroup limit (whole process)", f"{args.cgroup_mb} MB" if group else "none"),
        ("cgroup peak usage (incl. page cache)", f"{group_peak / mb:.0f} MB" if group else "-"),
        ("RSS after imports", f"{r['baseline_kb'] / 1024:.0f} MB"),
        ("peak RSS", f"{r['peak_kb'] / 1024:.0f} MB"),
        ("peak RSS - imports", f"{extra / mb:.0f} MB = {extra / largest:.1f} x largest tensor"),
        ("time", f"{r['seconds']:.1f} s"),
    ]
    print("| quantity | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
