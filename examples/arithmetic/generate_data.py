"""Deterministic arithmetic word problems with known answers, for GRPO with a verifiable reward.

Every problem is one small operation on one-digit numbers (sums up to 18), phrased as a
short story or as a bare sum: easy enough that the base model is right about 40% of the time
at greedy decoding, so most sampled groups mix right and wrong answers and GRPO has signal.
The answer is an integer, stored in ``answer``; the ``math_answer`` reward checks the last
number of a completion against it. The prompt asks for the number only: the
base model mostly ignores that and answers in a sentence, often wrongly; short completions
keep CPU rollouts cheap.

Train and held-out problems come from the same templates with disjoint seeds and are
deduplicated across the split, so held-out accuracy measures skill, not recall.

    python examples/arithmetic/generate_data.py   # writes train.jsonl and eval.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
INSTRUCTION = "Answer with the number only."

NAMES = ["Ana", "Ben", "Chen", "Dana", "Eli", "Farah", "Goran", "Hana", "Ivo", "Jin", "Kofi"]
ITEMS = ["apples", "stamps", "marbles", "books", "shells", "coins", "pencils", "cards"]


def _add(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b


def _sub(rng: random.Random) -> tuple[str, int]:
    b = rng.randint(2, 9)
    a = b + rng.randint(2, 9)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    return f"{name} had {a} {item} and gave away {b}. How many {item} are left?", a - b


def _mul(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 5), rng.randint(2, 5)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    return (
        f"{name} buys {a} boxes with {b} {item} in each box. How many {item} is that in total?",
        a * b,
    )


def _bare(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    a = a + b
    return f"What is {a} - {b}?", a - b


TEMPLATES = {"add": _add, "sub": _sub, "mul": _mul, "bare": _bare}


def make(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    rng, rows, seen = random.Random(seed), [], set(exclude)
    kinds = list(TEMPLATES)
    while len(rows) < n:
        kind = kinds[len(rows) % len(kinds)]
        question, answer = TEMPLATES[kind](rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"prompt": f"{question}\n{INSTRUCTION}", "answer": str(answer), "kind": kind})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    train = make(400, seed=1)
    held_out = make(100, seed=2, exclude={r["prompt"].split("\n")[0] for r in train})
    write(HERE / "train.jsonl", train)
    write(HERE / "eval.jsonl", held_out)
    print(f"wrote {len(train)} train and {len(held_out)} eval problems to {HERE}")


if __name__ == "__main__":
    main()
