"""A toy preference for the RLHF example: direct answers over padded or evasive ones.

Short factual questions (sums, opposites, plurals, word reversals, counts of everyday things),
each with a direct one-sentence answer we compute or write here. Every preference pair keeps
the direct answer as ``chosen`` and one of three worse answers as ``rejected``:

- **padded**: the same answer wrapped in a stock opener and closer ("Great question! ...
  I hope this helps!");
- **rambling**: the same answer followed by sentences that add nothing;
- **evasive**: short but useless ("I'm not sure about that.").

So the reward model has to learn "answer, and stop" rather than plain shortness, and PPO's
policy (SmolLM2-135M-Instruct, which pads and rambles) has somewhere to climb from its very
first samples. Train and held-out questions are disjoint.

    python examples/rlhf/generate_data.py
    # writes pairs.jsonl / eval_pairs.jsonl (stage rm) and prompts.jsonl / eval_prompts.jsonl (stage ppo)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "full": "empty",
    "wet": "dry",
    "old": "young",
    "high": "low",
    "happy": "sad",
    "strong": "weak",
    "thick": "thin",
    "loud": "quiet",
    "hard": "soft",
    "rich": "poor",
    "clean": "dirty",
    "cheap": "expensive",
    "near": "far",
    "tall": "short",
    "first": "last",
    "inside": "outside",
    "push": "pull",
    "buy": "sell",
    "win": "lose",
}
PLURALS = {
    "mouse": "mice",
    "child": "children",
    "tooth": "teeth",
    "foot": "feet",
    "goose": "geese",
    "person": "people",
    "leaf": "leaves",
    "knife": "knives",
    "box": "boxes",
    "city": "cities",
    "wolf": "wolves",
    "man": "men",
    "woman": "women",
    "potato": "potatoes",
    "bus": "buses",
    "baby": "babies",
    "half": "halves",
    "church": "churches",
    "sheep": "sheep",
    "fish": "fish",
}
COUNTS = [
    ("days are in a week", "seven"),
    ("months are in a year", "twelve"),
    ("hours are in a day", "24"),
    ("minutes are in an hour", "60"),
    ("seconds are in a minute", "60"),
    ("legs does a spider have", "eight"),
    ("sides does a triangle have", "three"),
    ("sides does a hexagon have", "six"),
    ("legs does an insect have", "six"),
    ("wheels does a bicycle have", "two"),
    ("days are in a leap year", "366"),
    ("letters are in the English alphabet", "26"),
    ("sides does a square have", "four"),
    ("weeks are in a year", "52"),
]
WORDS = [
    "stone",
    "river",
    "planet",
    "garden",
    "window",
    "pencil",
    "orange",
    "castle",
    "rocket",
    "butter",
    "silver",
    "market",
    "tunnel",
    "candle",
    "forest",
    "bridge",
    "jacket",
    "mirror",
]

OPENERS = [
    "Great question! I'd be happy to help you with that.",
    "Sure! That's a really interesting thing to ask about.",
    "Of course! Let me walk you through this.",
    "What a fun question! Here is the answer you are looking for.",
    "Absolutely, I can help with that!",
]
CLOSERS = [
    "I hope this helps! Let me know if you have any other questions.",
    "Feel free to ask if you need anything else!",
    "Is there anything else I can help you with today?",
    "I hope that answers your question. Have a wonderful day!",
]
RAMBLE = [
    "This is something many people wonder about at some point.",
    "It is a good thing to know, and it comes up more often than you might think.",
    "Knowing facts like this can be useful in everyday life.",
    "There are many ways to think about questions like this one.",
    "Learning small facts like this is a great way to keep your mind active.",
    "People have been asking questions like this for a very long time.",
]
EVASIVE = [
    "I'm not sure about that.",
    "I can't help with that.",
    "That depends on many things.",
    "You could look that up.",
    "Hard to say.",
]


def questions() -> list[tuple[str, str]]:
    """(question, direct answer) for every item of every family, in a fixed order."""
    out = []
    for a in range(2, 13):
        for b in range(2, 13, 3):
            out.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    for w, o in OPPOSITES.items():
        out.append((f"What is the opposite of '{w}'?", f"The opposite of '{w}' is '{o}'."))
    for w, p in PLURALS.items():
        out.append((f"What is the plural of '{w}'?", f"The plural of '{w}' is '{p}'."))
    for what, n in COUNTS:
        out.append((f"How many {what}?", f"There are {n}." if "are" in what else f"It has {n}."))
    for w in WORDS:
        out.append((f"Write the word '{w}' backwards.", f"'{w}' backwards is '{w[::-1]}'."))
    return out


def rejected(answer: str, rng: random.Random) -> str:
    kind = rng.choices(["padded", "rambling", "evasive"], weights=[2, 2, 1])[0]
    if kind == "padded":
        return f"{rng.choice(OPENERS)} {answer} {rng.choice(CLOSERS)}"
    if kind == "rambling":
        return " ".join([answer, *rng.sample(RAMBLE, 3)])
    return rng.choice(EVASIVE)


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(7)
    qa = questions()
    rng.shuffle(qa)
    n_eval = 24
    splits = {"eval": qa[:n_eval], "train": qa[n_eval:]}
    for split, items in splits.items():
        per_question = 2 if split == "train" else 1  # two different worse answers to learn from
        pairs = [
            {"prompt": q, "chosen": a, "rejected": rejected(a, rng)}
            for q, a in items
            for _ in range(per_question)
        ]
        prompts = [{"prompt": q} for q, _ in items]
        prefix = "" if split == "train" else "eval_"
        write(HERE / f"{prefix}pairs.jsonl", pairs)
        write(HERE / f"{prefix}prompts.jsonl", prompts)
        print(f"{split}: {len(pairs)} pairs / prompts")


if __name__ == "__main__":
    main()
