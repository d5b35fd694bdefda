"""Held-out accuracy of the arithmetic example (docs/rl.md): greedy answers scored by the same
``math_answer`` reward GRPO trains on, overall and per problem kind.

    python examples/arithmetic/evaluate.py                          # the base model
    python examples/arithmetic/evaluate.py --adapter runs/arithmetic-grpo/final
    python examples/arithmetic/evaluate.py --limit 40 --show 5

Writes nothing unless ``--out`` names a JSON file for the numbers and the answers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--data", default=str(HERE / "eval.jsonl"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--show", type=int, default=3, help="print this many answers")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from strop.commands.infer import _load
    from strop.infer import GenerationParams, generate
    from strop.train.rewards import extract_answer, math_answer

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    model, tok = _load(args.model, args.adapter)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    t0 = time.perf_counter()
    answers = generate(model, tok, [r["prompt"] for r in rows], params, progress=True)
    seconds = time.perf_counter() - t0
    scores = math_answer(None, answers, answer=[r["answer"] for r in rows])
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r, s in zip(rows, scores, strict=True):
        by_kind[r["kind"]].append(s)
    accuracy = sum(scores) / len(scores)
    number_only = sum(a.strip().lstrip("-").isdigit() for a in answers) / len(answers)
    label = args.adapter or args.model
    print(
        f"{label}: accuracy {accuracy:.3f} on {len(rows)} held-out problems "
        f"(number only in {number_only:.0%} of answers; {seconds:.0f} s)"
    )
    for kind, s in sorted(by_kind.items()):
        print(f"  {kind:9s} {sum(s) / len(s):.3f}  (n={len(s)})")
    for r, a, s in list(zip(rows, answers, scores, strict=True))[: args.show]:
        print(
            f"--- {r['prompt'].splitlines()[0]}  [answer {r['answer']}, "
            f"parsed {extract_answer(a)!r}, score {s:.0f}]\n{a.strip()}"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "adapter": args.adapter,
                    "accuracy": accuracy,
                    "number_only": number_only,
                    "by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()},
                    "answers": [
                        {"prompt": r["prompt"], "answer": r["answer"], "output": a, "score": s}
                        for r, a, s in zip(rows, answers, scores, strict=True)
                    ],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
