"""Throughput and memory of `strop prepare` on synthetic chat data, and its near-dedup against
a straightforward datasketch loop.

    python benchmarks/prepare_throughput.py                    # 1,000,000 records, 2 workers
    python benchmarks/prepare_throughput.py --records 50000    # a quick run

Generates records with planted exact duplicates, near-duplicates, PII and look-alikes
(strop.data.prepare.synthetic), runs normalise -> filter -> dedup_exact -> dedup_near -> pii
with ``num_workers`` processes, samples the resident memory of the whole process tree, and
prints a table: records/s per step (per core: records entering the step / CPU seconds spent in
it, summed over workers), overall records/s (wall clock), peak RSS and RSS as input grows.
Results also go to benchmarks/results/prepare_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import psutil

from strop.data.prepare import clean_records, load_prepare_config, run_prepare
from strop.data.prepare.base import ngram_tokens, texts
from strop.data.prepare.synthetic import chat_corpus
from strop.data.records import Message, Record

STEPS = [
    {"name": "normalise"},
    {
        "name": "filter",
        "min_chars": 1,
        "max_ngram_repeat": 0.5,
        "max_line_repeat": 0.5,
        "max_symbol_ratio": 0.3,
        "max_digit_ratio": 0.3,
        "languages": ["en", "zh"],
        "refusals": True,
    },
    {"name": "dedup_exact"},
    {"name": "dedup_near", "threshold": 0.8, "num_perm": 128, "shingle_size": 5},
    {"name": "pii"},
]


class RssSampler(threading.Thread):
    """Resident memory of this process and its children, every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop = interval, [], threading.Event()
        self.me = psutil.Process()

    def total(self) -> tuple[float, float]:
        main = self.me.memory_info().rss
        kids = 0
        for child in self.me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker may exit between the two calls
                kids += child.memory_info().rss
        return main / 2**20, (main + kids) / 2**20

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), *self.total()))
            time.sleep(self.interval)


def run_pipeline(data: Path, out: Path, workers: int, chunk: int, n: int, steps=STEPS) -> dict:
    raw = {
        "inputs": [str(data)],
        "output": {"dir": str(out)},
        "steps": steps,
        "num_workers": workers,
        "chunk_size": chunk,
    }
    cfg, specs = load_prepare_config(None, raw=raw)
    sampler = RssSampler()
    progress: list[tuple[int, float, float]] = []

    def log(msg: str) -> None:
        rows = int(msg.split()[1])
        progress.append((rows, *sampler.total()))
        print(
            f"  {msg}; RSS main {progress[-1][1]:.0f} MiB, all {progress[-1][2]:.0f} MiB",
            flush=True,
        )

    sampler.start()
    t0 = time.perf_counter()
    result = run_prepare(cfg, specs, log=log, log_every=max(n // 10, 1000))
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    rep = result.report
    return {
        "wall_s": round(wall, 1),
        "records_per_s": round(n / wall),
        "peak_rss_all_mib": round(max(s[2] for s in sampler.samples), 1),
        "peak_rss_main_mib": round(max(s[1] for s in sampler.samples), 1),
        "rss_by_progress": [
            {"rows": r, "main_mib": round(m, 1), "all_mib": round(a, 1)} for r, m, a in progress
        ],
        "steps": [
            {
                k: s[k]
                for k in (
                    "step",
                    "in",
                    "kept",
                    "changed",
                    "removed",
                    "seconds",
                    "decide_seconds",
                    "records_per_s",
                )
            }
            for s in rep["steps"]
        ],
        "near_dedup_index": {
            k: v
            for step in rep["steps"]
            if step["step"] == "dedup_near"
            for k, v in step.items()
            if k in ("bands", "rows", "stored")
        },
        "output_records": rep["output"]["records"],
    }


def _records(data: Path, m: int) -> tuple[list[Record], list[int]]:
    recs, ids = [], []
    with open(data, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= m:
                break
            row = json.loads(line)
            recs.append(
                Record(
                    f"x:{i}", messages=[Message(d["role"], d["content"]) for d in row["messages"]]
                )
            )
            ids.append(i)
    return recs, ids


def compare_datasketch(data: Path, m: int, truth: list[str]) -> dict:
    """strop's dedup_near alone vs a plain datasketch MinHash + MinHashLSH loop, one process,
    same shingles (5-grams of the same tokens), same threshold and permutations."""
    from datasketch import MinHash, MinHashLSH

    recs, _ = _records(data, m)
    planted = {i for i, k in enumerate(truth[:m]) if k in ("exact_dup", "near_dup")}

    def score(removed: set[int]) -> dict:
        hit = len(removed & planted)
        return {
            "removed": len(removed),
            "recall": round(hit / max(len(planted), 1), 4),
            "precision": round(hit / max(len(removed), 1), 4),
        }

    t0 = time.perf_counter()
    result = clean_records(recs, [("dedup_near", {"threshold": 0.8, "num_perm": 128})])
    ours_s = time.perf_counter() - t0
    ours = {int(r["origin"][2:]) for r in result.removed}

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    theirs = set()
    for i, rec in enumerate(recs):
        toks = ngram_tokens("\n".join(texts(rec)))
        grams = {" ".join(toks[j : j + 5]) for j in range(max(len(toks) - 4, 1))}
        mh = MinHash(num_perm=128)
        mh.update_batch([g.encode("utf-8") for g in grams])
        if lsh.query(mh):
            theirs.add(i)
        else:
            lsh.insert(str(i), mh)
    theirs_s = time.perf_counter() - t0
    return {
        "records": m,
        "planted_duplicates": len(planted),
        "strop": {"seconds": round(ours_s, 2), "records_per_s": round(m / ours_s), **score(ours)},
        "datasketch": {
            "seconds": round(theirs_s, 2),
            "records_per_s": round(m / theirs_s),
            **score(theirs),
        },
    }


def print_run(label: str, run: dict, workers: int) -> None:
    print(f"\n{label} pipeline:\n")
    print("| step | records in | removed | CPU s | records/s per core |")
    print("|---|---|---|---|---|")
    for s in run["steps"]:
        cpu = s["seconds"] + s["decide_seconds"]
        print(f"| {s['step']} | {s['in']} | {s['removed']} | {cpu:.1f} | {s['records_per_s']} |")
    print(
        f"\n{run['records_per_s']} records/s wall ({run['wall_s']} s, {workers} workers), peak RSS "
        f"{run['peak_rss_all_mib']:.0f} MiB all processes (main {run['peak_rss_main_mib']:.0f} MiB)"
    )
    grows = ", ".join(f"{p['rows']}: {p['all_mib']:.0f}" for p in run["rss_by_progress"])
    print(f"RSS (MiB, all processes) as input grows: {grows}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=2000)
    ap.add_argument("--datasketch-records", type=int, default=20_000, help="0: skip")
    ap.add_argument(
        "--stateless-records",
        type=int,
        default=300_000,
        help="also run normalise -> filter -> pii (no dedup index) on this many records, to show "
        "that RSS outside the dedup indexes stays flat (0: skip)",
    )
    ap.add_argument("--skip-full", action="store_true", help="skip the full pipeline run")
    ap.add_argument("--dir", default=None, help="work dir (default: a temporary one)")
    ap.add_argument("--out", default="benchmarks/results/prepare_throughput.json")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="strop-prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "chats.jsonl"
    print(f"generating {args.records} records in {data} ...", flush=True)
    t0 = time.perf_counter()
    truth: list[str] = []
    kinds: dict[str, int] = {}
    with open(data, "w", encoding="utf-8") as fh:
        for row, t in chat_corpus(args.records, seed=0, refusal_rate=0.01):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            truth.append(t["kind"])
            kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
            kinds["pii"] = kinds.get("pii", 0) + ("pii" in t)
    gen_s = time.perf_counter() - t0
    print(f"  {data.stat().st_size / 2**20:.0f} MiB in {gen_s:.0f} s; planted {kinds}", flush=True)
    pipe = stateless = cmp = None
    if not args.skip_full:
        print(f"pipeline, {args.workers} workers ...", flush=True)
        pipe = run_pipeline(data, work / "out", args.workers, args.chunk_size, args.records)
    if args.stateless_records:
        k = min(args.stateless_records, args.records)
        part = work / "part.jsonl"
        with open(data, encoding="utf-8") as src, open(part, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= k:
                    break
                dst.write(line)
        print(f"stateless pipeline (normalise, filter, pii) on {k} records ...", flush=True)
        no_dedup = [STEPS[0], STEPS[1], STEPS[4]]
        stateless = run_pipeline(
            part, work / "out-stateless", args.workers, args.chunk_size, k, no_dedup
        )
    m = min(args.datasketch_records, args.records)
    if m:
        print(f"near dedup vs datasketch on the first {m} records ...", flush=True)
        cmp = compare_datasketch(data, m, truth)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "records": args.records,
        "input_mib": round(data.stat().st_size / 2**20, 1),
        "planted": kinds,
        "workers": args.workers,
        "pipeline": pipe,
        "stateless_pipeline": stateless,
        "near_dedup_vs_datasketch": cmp,
    }
    for label, run in (("full", pipe), ("stateless", stateless)):
        if run is not None:
            print_run(label, run, args.workers)
    for name in ("strop", "datasketch") if cmp else ():
        c = cmp[name]
        print(
            f"near dedup {name}: {c['records_per_s']} records/s, recall {c['recall']}, "
            f"precision {c['precision']}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
