"""Generate a second small specialist task for the merge worked example: route customer
support tickets (pure stdlib, deterministic, every name and product invented).

    python examples/merge/tickets/generate_data.py [--seed 0] [--out-dir examples/merge/tickets]

writes train.jsonl (240 rows) and eval.jsonl (60 rows) in OpenAI ``messages`` format. The
answer is ``<category>, <priority>``: category one of billing, shipping, account, technical,
refund; priority high when the customer signals urgency, else normal. Eval rows use products
and customer names disjoint from train.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = (
    "Route the support ticket. Answer with '<category>, <priority>' only. category: billing, "
    "shipping, account, technical or refund. priority: high if the customer needs it urgently, "
    "else normal."
)
# fmt: off
ISSUES = {
    "billing": [
        "I was charged twice for {product} on my last invoice.",
        "My card was billed {amount} but my plan should cost less.",
        "The invoice for order {order} shows a fee I never agreed to.",
        "Why did my subscription price for {product} go up this month?",
    ],
    "shipping": [
        "Order {order} with my {product} still has not arrived.",
        "The tracking page for order {order} has not moved in a week.",
        "My {product} was delivered to the wrong address.",
        "The courier says order {order} was delivered but nothing is here.",
    ],
    "account": [
        "I cannot log in to my account since I changed my email.",
        "Please update the phone number on my account to a new one.",
        "My password reset link for the {product} app never arrives.",
        "I want to merge my two accounts into one.",
    ],
    "technical": [
        "The {product} keeps restarting every few minutes.",
        "After the last update my {product} will not connect to wifi.",
        "The {product} app crashes as soon as I open settings.",
        "My {product} shows error code {code} on start-up.",
    ],
    "refund": [
        "I returned the {product} two weeks ago and want my money back.",
        "Please refund order {order}; the {product} arrived broken.",
        "I cancelled order {order} but have not received a refund.",
        "The {product} is not what I ordered, I would like a refund.",
    ],
}
URGENT = ["I need this fixed today.", "This is urgent, please help ASAP.",
          "Please respond immediately, my business depends on it.",
          "It is an emergency, I need an answer right now."]
CALM = ["Thanks in advance.", "No rush, whenever you can.", "Kind regards.",
        "Let me know what you need from me."]
GREET = ["Hello,", "Hi team,", "Dear support,", "Good morning,", ""]
PRODUCTS = {
    "train": ["Orbix speaker", "Talon router", "Veyra watch", "Nimbo kettle", "Quill tablet",
              "Brisk blender", "Solace headphones", "Krypt lock"],
    "eval": ["Mellow lamp", "Zephyr fan", "Corvid camera", "Lumen projector"],
}
NAMES = {
    "train": ["Ada Brenn", "Tomas Ulk", "Mira Osk", "Per Valdt", "Ines Coro", "Jun Tallo"],
    "eval": ["Rhea Vost", "Oren Kall", "Lisa Dunmar"],
}
# fmt: on


def make_row(rng: random.Random, split: str, category: str, urgent: bool) -> dict:
    text = rng.choice(ISSUES[category]).format(
        product=rng.choice(PRODUCTS[split]),
        order=f"#{rng.randint(10000, 99999)}",
        amount=f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
        code=f"E{rng.randint(100, 999)}",
    )
    tail = rng.choice(URGENT if urgent else CALM)
    body = " ".join(x for x in [rng.choice(GREET), text, tail, rng.choice(NAMES[split])] if x)
    answer = f"{category}, {'high' if urgent else 'normal'}"
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": body},
            {"role": "assistant", "content": answer},
        ]
    }


def generate(seed: int, split: str, per_cell: int) -> list[dict]:
    rng = random.Random(f"{seed}-{split}")
    rows = [
        make_row(rng, split, cat, urgent)
        for cat in ISSUES
        for urgent in (False, True)
        for _ in range(per_cell)
    ]
    rng.shuffle(rows)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(Path(__file__).parent))
    args = p.parse_args()
    out = Path(args.out_dir)
    for split, per_cell in (("train", 24), ("eval", 6)):
        rows = generate(args.seed, split, per_cell)
        with open(out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"wrote {len(rows)} rows to {out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
