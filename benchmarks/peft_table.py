"""Every fine-tuning method on one task, one table: what each costs and buys (docs/peft.md).

For each method, in its own process (so peak memory is that method's alone): train the
quickstart events task (examples/events: SFT of SmolLM2-135M-Instruct into a JSON extractor)
for the same number of optimizer steps — the same packed rows in the same order, so the same
target-token budget — then report trainable parameters (count, %), peak memory (RSS on CPU,
max allocated on CUDA), training target tokens/s, held-out loss, held-out extraction scores
(greedy answers on examples/events/eval.jsonl, field accuracy and exact match) and the size on
disk of what final/ must hold (adapter files, or the whole model for full/freeze).

    python benchmarks/peft_table.py                       # SmolLM2-135M, every method, ~hours on CPU
    python benchmarks/peft_table.py --steps 30 --eval-n 20 --methods lora,prompt,adapter
    python benchmarks/peft_table.py --tiny                # smoke run: tiny-llama, 3 steps each
    python benchmarks/peft_table.py --write-docs          # also replace the table in docs/peft.md

Learning rates are the usual choice per family (not tuned here): see METHODS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "examples" / "events"
DOCS = ROOT / "docs" / "peft.md"
START, END = "<!-- peft-table:start -->", "<!-- peft-table:end -->"
INIT_TEXT = "Extract the key event as one JSON line."

# label -> (method section, lr, extra train keys). bitfit is absent: Llama-style models have no
# biases, and strop refuses bitfit on them rather than train nothing.
METHODS: dict[str, tuple[dict, float, dict]] = {
    "full": ({"name": "full"}, 5e-5, {}),
    "freeze (last 4 layers)": ({"name": "freeze", "trainable_layers": 4}, 1e-4, {}),
    "lora r16": ({"name": "lora", "r": 16, "alpha": 32}, 1e-3, {}),
    "dora r16": ({"name": "dora", "r": 16, "alpha": 32}, 1e-3, {}),
    "qlora r16 (nf4)": ({"name": "qlora", "r": 16, "alpha": 32}, 1e-3, {}),
    "qlora r16 + paged_adamw_8bit": (
        {"name": "qlora", "r": 16, "alpha": 32},
        1e-3,
        {"optimizer": "paged_adamw_8bit"},
    ),
    "ia3": ({"name": "ia3"}, 3e-3, {}),
    "adapter 64": ({"name": "adapter", "size": 64}, 1e-3, {}),
    "prompt 20": ({"name": "prompt", "virtual_tokens": 20, "init_text": INIT_TEXT}, 3e-2, {}),
    "prefix 20 (MLP)": ({"name": "prefix", "virtual_tokens": 20, "projection": True}, 5e-3, {}),
    "ptuning v1 20 (MLP)": ({"name": "ptuning", "virtual_tokens": 20}, 1e-2, {}),
    "ptuning v2 20 (deep)": ({"name": "ptuning", "virtual_tokens": 20, "deep": True}, 1e-2, {}),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


# ------------------------------------------------------------------------------------------
# Worker: one method, one process
# ------------------------------------------------------------------------------------------


def _config(label: str, args, out: Path):
    import yaml

    from strop.config import load_config

    method, lr, extra_train = METHODS[label]
    raw = yaml.safe_load((EVENTS / "config.yaml").read_text())
    raw["method"] = method
    raw["data"].update(train=str(EVENTS / "train.jsonl"), eval=str(EVENTS / "eval.jsonl"))
    raw["train"].update(
        output_dir=str(out),
        max_steps=args.steps,
        lr=lr,
        log_every=1,
        eval_every=0,
        save_every=0,
        progress=False,
        tensorboard=False,
        resume="never",
        **extra_train,
    )
    if args.tiny:
        raw["model"] = {"name": "tiny-llama"}
        raw["data"]["max_length"] = 2048  # byte-level tokenizer: ~4x the tokens
    return load_config(None, raw=raw)


def _trainable(cfg) -> tuple[int, int]:
    """Trainable parameters of the method as the loop builds it (a fresh copy), and the base
    model's parameter count (before any transform: QLoRA's packed 4-bit weights would
    otherwise count as fewer parameters)."""
    from strop.models.load import load_model
    from strop.models.transforms import count_trainable, parse_method

    transform, params = parse_method(cfg.method)
    model, _, _ = load_model(cfg.model.name, cfg.model.dtype, attn=cfg.model.attn)
    total = sum(p.numel() for p in model.parameters())
    return count_trainable(transform.apply(model, params))[0], total


def _rate(history: list[dict]) -> float:
    """Target tokens/s over every step but the first (warm-up); log_every is 1."""
    steps = [h for h in history if h.get("target_tokens_per_s")][1:]
    prev = {h["step"]: h["tokens"] for h in history}
    tokens = sum(h["tokens"] - prev.get(h["step"] - 1, 0) for h in steps)
    seconds = sum(
        (h["tokens"] - prev.get(h["step"] - 1, 0)) / h["target_tokens_per_s"] for h in steps
    )
    return tokens / seconds if seconds else float("nan")


def _disk_mib(final: Path) -> float:
    files = [f for f in final.iterdir() if f.is_file() and f.name not in TOKENIZER_FILES]
    return sum(f.stat().st_size for f in files) / 2**20


def _score(cfg, final: Path, args) -> dict:
    from strop.eval.extraction import score_extractions
    from strop.infer import GenerationParams, generate
    from strop.models.load import load_model

    rows = [json.loads(x) for x in (EVENTS / "eval.jsonl").read_text().splitlines() if x.strip()]
    rows = rows[: args.eval_n]
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]
    answers = [r["messages"][-1]["content"] for r in rows]
    adapter = None if (final / "config.json").exists() else str(final)
    model_name = str(final) if adapter is None else cfg.model.name
    model, tok, _ = load_model(model_name, cfg.model.dtype, adapter=adapter)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, batch_size=20)
    scores = score_extractions(generate(model, tok, prompts, params), answers)
    return {"field_accuracy": scores.field_accuracy, "exact_match": scores.exact_match}


def worker(label: str, args) -> dict:
    import torch

    from strop.train.loop import train

    with tempfile.TemporaryDirectory(prefix="strop-peft-table-") as tmp:
        cfg = _config(label, args, Path(tmp) / "run")
        t0 = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - t0
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        trainable, total = _trainable(cfg)
        return {
            "method": label,
            "trainable": trainable,
            "trainable_pct": 100 * trainable / total,
            "peak_mib": peak,
            "tokens_per_s": _rate(result.history),
            "target_tokens": result.history[-1]["tokens"],
            "train_wall_s": wall,
            "eval_loss": result.eval_loss,
            "disk_mib": _disk_mib(result.final_dir),
            **_score(cfg, result.final_dir, args),
        }


# ------------------------------------------------------------------------------------------
# Parent: one subprocess per method, then the table
# ------------------------------------------------------------------------------------------


def table(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| method | trainable | % | peak MiB | target tok/s | held-out loss | field acc. "
        "| exact match | on disk MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {r['trainable_pct']:.3f} | "
            f"{r['peak_mib']:,.0f} | {r['tokens_per_s']:,.0f} | {r['eval_loss']:.3f} | "
            f"{r['field_accuracy']:.3f} | {r['exact_match']:.3f} | {r['disk_mib']:.2f} |"
        )
    return "\n".join(lines)


def _write_docs(text: str) -> None:
    doc = DOCS.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOCS}: markers {START} / {END} not found")
    head, rest = doc.split(START, 1)
    DOCS.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="smoke run: tiny-llama, 3 steps, 4 answers")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per method (200)")
    ap.add_argument("--eval-n", type=int, default=None, help="held-out answers scored (40)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated labels")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/)")
    ap.add_argument("--write-docs", action="store_true", help="replace the table in docs/peft.md")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (3 if args.tiny else 200)
    args.eval_n = args.eval_n or (4 if args.tiny else 40)
    if args.tiny:
        args.max_new_tokens = min(args.max_new_tokens, 16)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return 0
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in labels if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    rows = []
    for label in labels:
        cmd = [sys.executable, __file__, "--worker", label, "--steps", str(args.steps)]
        cmd += ["--eval-n", str(args.eval_n), "--max-new-tokens", str(args.max_new_tokens)]
        cmd += ["--tiny"] if args.tiny else []
        print(f"== {label}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        found = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not found:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"method": label, "error": last[:200]})
            print(f"   failed: {last}")
            continue
        rows.append(json.loads(found[-1][len("RESULT ") :]))
        print("   " + json.dumps(rows[-1]))
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    model = "tiny-llama (smoke run)" if args.tiny else "SmolLM2-135M-Instruct"
    header = (
        f"{model}, examples/events, {args.steps} steps per method (same packed rows, same "
        f"order), {args.eval_n} held-out answers; {time.strftime('%Y-%m-%d')}, "
        f"{device or platform.machine()}, torch {torch.__version__}.\n"
        f"Command: `python benchmarks/peft_table.py {' '.join(sys.argv[1:])}`"
    )
    text = table(rows, header)
    print("\n" + text)
    out = (
        Path(args.out)
        if args.out
        else ROOT
        / "benchmarks"
        / "results"
        / ("peft_table_tiny.json" if args.tiny else "peft_table.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    if args.write_docs:
        _write_docs(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
