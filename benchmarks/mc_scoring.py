"""Multiple-choice log-likelihood scoring: strop's shared-prompt scorer vs one forward per choice.

Builds MMLU-shaped questions in code (seeded; k-shot prompts from generated dev questions, four
choices), turns them into (context, continuation) token pairs exactly as ``strop eval`` does,
and times three scorers on the same pairs:
  strop        loglik.continuation_logprobs: each question's prompt encoded once,
               the choices' later tokens on its KV cache, logits only where read
  per-choice   loglik.per_choice_logprobs: the same batching, one padded row per
               (question, choice) -- the scorer strop had before
  naive        one forward of prompt + choice per (question, choice), batch 1, full logits
Prints questions/s and the speed-up over each, checks all three agree (max |diff| of the
log-likelihoods) and writes benchmarks/results/mc_scoring-<device>-<model>-b<batch>.json. Run:
    python benchmarks/mc_scoring.py --model tiny-llama
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from strop.eval.loglik import continuation_logprobs, per_choice_logprobs, split_ids
from strop.eval.multiple_choice import MCExample, build_prompt, continuation

WORDS = [
    "river",
    "stone",
    "market",
    "winter",
    "garden",
    "engine",
    "letter",
    "harbour",
    "valley",
    "signal",
    "orchard",
    "lantern",
    "copper",
    "meadow",
    "bridge",
    "candle",
    "mirror",
    "ladder",
    "basket",
    "timber",
    "compass",
    "island",
    "thunder",
    "forest",
    "village",
    "pepper",
    "silver",
    "anchor",
    "feather",
    "marble",
]


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_question(rng: random.Random) -> MCExample:
    choices = [_words(rng, 1, 6) for _ in range(4)]
    return MCExample("bench", _words(rng, 12, 40) + "?", choices, rng.randrange(4))


def make_pairs(tok, n: int, shots: int, score: str, seed: int) -> list[tuple[list, list]]:
    rng = random.Random(seed)
    dev = [make_question(rng) for _ in range(shots)]
    pairs = []
    for _ in range(n):
        ex = make_question(rng)
        context = build_prompt(ex, dev, score)
        for i in range(len(ex.choices)):
            pairs.append(split_ids(tok, context, continuation(ex, i, score)))
    return pairs


def naive_logprobs(model, pairs) -> list[float]:
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for ctx, cont in pairs:
            ids = torch.tensor([ctx + cont], device=device)
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=device)
            out.append(float(logp[pos, torch.tensor(cont, device=device)].sum()))
    return out


def _time(fn, reps: int) -> tuple[float, list[float]]:
    result = fn()  # warm-up (and the scores compared)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama", help="model name or local dir")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--shots", type=int, default=2, help="k-shot examples in every prompt")
    ap.add_argument("--score", nargs="+", default=["letter", "text"], choices=["letter", "text"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--skip-naive", action="store_true", help="time strop and per-choice only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from strop.models.load import load_model

    model, tok, _ = load_model(args.model, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows = []
    for score in args.score:
        pairs = make_pairs(tok, args.questions, args.shots, score, seed=0)
        scorers = {
            "strop": lambda p=pairs: continuation_logprobs(model, p, args.batch_size, pad),
            "per-choice": lambda p=pairs: per_choice_logprobs(model, p, args.batch_size, pad),
        }
        if not args.skip_naive:
            scorers["naive"] = lambda p=pairs: naive_logprobs(model, p)
        timed = {name: _time(fn, args.reps) for name, fn in scorers.items()}
        ref = timed["strop"][1]
        tokens = sum(len(c) + len(t) for c, t in pairs) / args.questions
        for name, (sec, lls) in timed.items():
            rows.append(
                {
                    "score": score,
                    "scorer": name,
                    "questions_per_s": args.questions / sec,
                    "speedup_of_strop": sec / timed["strop"][0],
                    "max_abs_diff_vs_strop": max(abs(a - b) for a, b in zip(lls, ref, strict=True)),
                    "tokens_per_question_unshared": tokens,
                }
            )
    print(f"{args.model} {args.dtype} on {device}, {args.questions} questions x 4 choices, ")
    print(f"{args.shots}-shot, batch {args.batch_size}, threads {torch.get_num_threads()}")
    print(
        f"{'score':7} {'scorer':11} {'questions/s':>12} {'strop is x faster':>18} {'max|diff|':>10}"
    )
    for r in rows:
        print(
            f"{r['score']:7} {r['scorer']:11} {r['questions_per_s']:12.2f} "
            f"{r['speedup_of_strop']:18.2f} {r['max_abs_diff_vs_strop']:10.2e}"
        )
    name = f"mc_scoring-{device}-{Path(args.model).name}-b{args.batch_size}.json"
    out = Path(__file__).parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    meta = vars(args) | {
        "device": device,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    out.write_text(json.dumps({"config": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
