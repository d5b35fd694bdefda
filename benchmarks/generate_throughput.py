"""Generation throughput: strop's engine side by side with plain transformers ``generate``.

    .venv/bin/python benchmarks/generate_throughput.py                 # 48 prompts, batch 16
    .venv/bin/python benchmarks/generate_throughput.py --n 80 --batch-size 16 --max-new-tokens 96

Every configuration runs in a fresh process (its peak memory is its own) on the same greedy
prompts: the quickstart's held-out announcements (examples/events/eval.jsonl), fp32 weights.

| config | what it is |
|---|---|
| plain-generate | what a user writes: chat template, left padding, ``model.generate(do_sample=False)`` in batches of ``--batch-size``, stop at the end-of-turn tokens |
| strop-static | strop.rollout.sample: the lean decode step, finished rows leave a static batch |
| strop-exact | strop.infer.generate, weights="exact": continuous batching, the model's fp32 weights |
| strop-auto | strop.infer.generate, weights="auto" (the default): fp16 copies of the weights in the decode step on x86 CPUs |
| strop-auto-2x | strop-auto with twice the rows in flight |

Reported: wall seconds (model load excluded), new tokens (up to and including the stop token),
tokens/s, peak RSS, and how many replies are identical to plain-generate's (greedy: any
difference is round-off deciding a near-tie; the fp16 weights' differences are counted here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from throughput_common import RESULTS, ROOT, cpu_facts, cpu_line, peak_rss_mib, run_worker

CONFIGS = ["plain-generate", "strop-static", "strop-exact", "strop-auto", "strop-auto-2x"]
EVAL = ROOT / "examples" / "events" / "eval.jsonl"


def _prompts(n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()][:n]
    return [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]


def worker(args) -> None:
    import torch

    from strop.infer import (
        GenerationParams,
        _cut,
        _generation_kwargs,
        generate,
        render_prompt,
        stop_token_ids,
    )
    from strop.models.load import load_model
    from strop.rollout import sample

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, _ = load_model(args.model, "fp32")
    model.eval()
    prompts = _prompts(args.n)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    stops = set(stop_token_ids(model, tok)) | {tok.pad_token_id}
    config, texts, new = args.worker, [], 0
    t0 = time.perf_counter()
    if config == "plain-generate":
        kwargs = _generation_kwargs(model, tok, params)
        tok.padding_side = "left"
        with torch.inference_mode():
            for i in range(0, len(prompts), args.batch_size):
                chunk = [render_prompt(tok, p) for p in prompts[i : i + args.batch_size]]
                batch = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                seqs = model.generate(**batch, **kwargs)
                for row in seqs[:, batch["input_ids"].shape[1] :].tolist():
                    ids, made = _cut(row, stops)
                    new += made
                    texts.append(tok.decode(ids, skip_special_tokens=True))
    elif config == "strop-static":
        enc = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        with torch.inference_mode():
            for i in range(0, len(enc), args.batch_size):
                chunk = enc[i : i + args.batch_size]
                ro = sample(
                    model, chunk, 1, args.max_new_tokens, sorted(stops), tok.pad_token_id, 0.0
                )
                for row in ro.completion_ids:
                    ids, made = _cut(row, stops)
                    new += made
                    texts.append(tok.decode(ids, skip_special_tokens=True))
    else:
        params.weights = "exact" if config == "strop-exact" else "auto"
        if config == "strop-auto-2x":
            params.batch_size = 2 * args.batch_size
        stats: dict = {}
        texts = generate(model, tok, prompts, params, stats=stats)
        new = stats["new_tokens"]
    seconds = time.perf_counter() - t0
    Path(args.worker_out).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "new_tokens": new,
                "tokens_per_s": new / seconds,
                "peak_rss_mib": peak_rss_mib(),
                "texts": texts,
            }
        )
    )


def _table(results: dict, reference: list[str] | None) -> list[list[str]]:
    headers = ["config", "rows", "seconds", "new tokens", "tokens/s", "× plain", "peak RSS MiB"]
    headers.append("same reply as plain")
    rows = [headers]
    base = results.get("plain-generate", {}).get("tokens_per_s")
    for name, r in results.items():
        if "error" in r:
            rows.append([name, r["error"][:80]] + [""] * (len(headers) - 2))
            continue
        same = ""
        if reference is not None:
            same = f"{sum(a == b for a, b in zip(r['texts'], reference, strict=True))}/"
            same += str(len(reference))
        rows.append(
            [
                name,
                str(r["rows"]),
                f"{r['seconds']:.1f}",
                str(r["new_tokens"]),
                f"{r['tokens_per_s']:.1f}",
                f"{r['tokens_per_s'] / base:.2f}" if base else "",
                f"{r['peak_rss_mib']:,.0f}",
                same,
            ]
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=48, help="prompts (held-out announcements)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    facts = cpu_facts()
    print(cpu_line(facts))
    print(
        f"model {args.model} (fp32 weights), {args.n} prompts, greedy, "
        f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size}"
    )
    results = {}
    for config in args.configs.split(","):
        print(f"running {config} ...", flush=True)
        flags = {
            "--model": args.model,
            "--n": args.n,
            "--batch-size": args.batch_size,
            "--max-new-tokens": args.max_new_tokens,
            "--threads": args.threads or None,
        }
        results[config] = run_worker(__file__, config, flags)
        rows = 2 * args.batch_size if config.endswith("-2x") else args.batch_size
        results[config]["rows"] = rows
    reference = results.get("plain-generate", {}).get("texts")
    table = _table(results, reference)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = zip(row, widths, strict=True)
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
    exact = results.get("strop-exact", {}).get("texts")
    auto = results.get("strop-auto", {}).get("texts")
    if exact and auto:
        same = sum(a == b for a, b in zip(exact, auto, strict=True))
        print(f"strop-auto (fp16 weights) replies identical to strop-exact: {same}/{len(exact)}")
    out = Path(args.out) if args.out else RESULTS / "generate_throughput.json"
    report = {"cpu": facts, "args": {k: v for k, v in vars(args).items() if "worker" not in k}}
    report["results"] = results
    out.write_text(json.dumps(report, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
