"""Generic instructions for replay: the base model's own answers to them are mixed into each
specialist's training data so that a specialist learns its task *without* changing how the
model answers everything else (docs/merge.md, "Replay"). Deterministic; written for strop.

    python examples/merge/replay/generate_prompts.py            # -> prompts.jsonl (96 rows)
    strop generate --model smollm2-135m-instruct --input examples/merge/replay/prompts.jsonl \
        --output runs/replay/answers.jsonl --max-new-tokens 96 --batch-size 16
    python examples/merge/replay/generate_prompts.py --answers runs/replay/answers.jsonl
                                                                 # -> replay.jsonl (chat rows)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
THINGS = [
    "a rainbow",
    "a volcano",
    "a glacier",
    "a lighthouse",
    "a prime number",
    "a compass",
    "a thermometer",
    "a bridge",
    "a library",
    "a seed",
    "a battery",
    "an orchestra",
    "a map",
    "a calendar",
    "a telescope",
    "a windmill",
    "a river delta",
    "a beehive",
]
ACTIVITIES = [
    "learning to cook",
    "running in the rain",
    "keeping a garden",
    "studying for an exam",
    "saving money",
    "sleeping well",
    "writing a letter",
    "starting to swim",
    "planning a picnic",
    "reading more books",
    "drinking more water",
    "packing for a trip",
]
TOPICS = [
    "the ocean",
    "autumn leaves",
    "a quiet morning",
    "city buses",
    "old trees",
    "snow",
    "a busy market",
    "mountains",
    "friendship",
    "the moon",
    "bicycles",
    "a thunderstorm",
]
CATEGORIES = [
    "fruits",
    "musical instruments",
    "colours",
    "birds",
    "vegetables",
    "board games",
    "planets",
    "kitchen tools",
    "sports",
    "flowers",
]
SYSTEMS = [None, None, "You are a helpful assistant.", "You are a friendly tutor. Keep it short."]
TEMPLATES = [
    ("What is {thing}?", "thing"),
    ("Explain {thing} to a child in two sentences.", "thing"),
    ("Give three tips for {activity}.", "activity"),
    ("What is hard about {activity}?", "activity"),
    ("Write one sentence about {topic}.", "topic"),
    ("Write a short poem about {topic}.", "topic"),
    ("List four {category}.", "category"),
    ("Name a few {category} and say one thing about each.", "category"),
]
POOLS = {"thing": THINGS, "activity": ACTIVITIES, "topic": TOPICS, "category": CATEGORIES}


def prompts(n: int = 96, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    assert n <= sum(len(POOLS[key]) for _, key in TEMPLATES), "not that many distinct prompts"
    rows, seen = [], set()
    while len(rows) < n:
        template, key = rng.choice(TEMPLATES)
        text = template.format(**{key: rng.choice(POOLS[key])})
        if text in seen:
            continue
        seen.add(text)
        system = rng.choice(SYSTEMS)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}
        ]
        rows.append({"messages": messages})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--answers", help="strop generate's output: write replay.jsonl from it")
    args = ap.parse_args()
    if not args.answers:
        out = HERE / "prompts.jsonl"
        out.write_text("".join(json.dumps(r) + "\n" for r in prompts()))
        print(f"wrote {out}")
        return
    rows = [json.loads(x) for x in Path(args.answers).read_text().splitlines() if x.strip()]
    out = HERE / "replay.jsonl"
    with out.open("w") as f:
        for r in rows:
            turn = {"role": "assistant", "content": r["completion"].strip()}
            f.write(json.dumps({"messages": [*r["messages"], turn]}) + "\n")
    print(f"wrote {out} ({len(rows)} conversations)")


if __name__ == "__main__":
    main()
