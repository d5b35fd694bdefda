"""Generate the quickstart's corporate-event extraction dataset (pure stdlib, deterministic).

Every announcement, company, person and template here is invented. Usage:

    python examples/events/generate_data.py [--seed 0] [--out-dir examples/events]

writes train.jsonl and eval.jsonl in OpenAI ``messages`` format. Eval rows use entity pools
(companies, people, counterparties) disjoint from train, so scores measure generalisation.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = (
    "Extract the key event as one JSON line with keys company, stock_code, event_type, "
    'date (YYYY-MM-DD), amount ("<integer> <CNY|USD|HKD|shares>"), counterparty_or_person; '
    "null if absent. event_type: share_buyback, executive_shareholding_increase, "
    "executive_shareholding_decrease, major_contract, equity_pledge, dividend or none."
)
EVENT_TYPES = (
    "share_buyback",
    "executive_shareholding_increase",
    "executive_shareholding_decrease",
    "major_contract",
    "equity_pledge",
    "dividend",
)
ALL_TYPES = (*EVENT_TYPES, "none")
N_TRAIN = {**dict.fromkeys(EVENT_TYPES, 60), "none": 40}  # 400 rows
N_EVAL = {**dict.fromkeys(EVENT_TYPES, 12), "none": 8}  # 80 rows

# --- invented vocabulary ------------------------------------------------------------------
# fmt: off
PRE = ["Nor", "Kes", "Vel", "Tar", "Quen", "Lum", "Bra", "Zor", "Hal", "Mer", "Sol", "Cae",
       "Dra", "Fen", "Gal", "Ith", "Jor", "Lys", "Ost", "Pyr", "Rho", "Sev", "Ul", "Wyn"]
SUF = ["vale", "trion", "dex", "mont", "ora", "wick", "stead", "lyn", "gard", "thane", "ric",
       "fold", "crest", "ion", "bury", "ven"]
INDUSTRY = ["Semiconductor", "Pharmaceutical", "New Energy", "Precision Machinery", "Textile",
            "Logistics", "Chemical", "Optoelectronics", "Agricultural", "Software", "Steel",
            "Medical Devices", "Food", "Environmental", "Auto Parts", "Materials"]
FORM = ["Co., Ltd.", "Group Co., Ltd.", "Holdings Ltd.", "Inc."]
SURNAMES = ["Lan", "Qiu", "Mo", "Fang", "Tian", "Bai", "Shen", "Gu", "Ruan", "Yan", "Cen", "Lou",
            "Ji", "Dou", "Kang", "Pei"]
GIVEN = ["Anrui", "Boxi", "Chenyu", "Dehan", "Feilin", "Guoqi", "Haotian", "Jiamu", "Kexin",
         "Lingfei", "Minghe", "Ningzhi", "Peiran", "Ruoxi", "Shaoyun", "Weiheng", "Xiaotong",
         "Yuqian", "Zhenhao", "Zimo"]
TITLES = ["Chairman", "General Manager", "Chief Financial Officer", "Vice President", "Director",
          "Board Secretary", "Supervisor"]
FIN = ["Securities Co., Ltd.", "Bank Co., Ltd.", "Trust Co., Ltd."]
PRODUCTS = ["lithium battery cells", "wafer testing equipment", "industrial software",
            "steel structures", "medical imaging systems", "cold-chain logistics services",
            "photovoltaic modules", "specialty resins"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
# fmt: on
DISTRACTORS = [
    "The board of directors guarantees that this announcement is true, accurate and complete.",
    "Investors are advised to pay attention to investment risks.",
    "The Company's production and operation are currently normal.",
    "The Company will fulfil its information disclosure obligations in a timely manner.",
    "This matter does not constitute a major asset restructuring.",
    "The designated disclosure media of the Company remain unchanged.",
    "The Company has {emp} employees as of the end of last year.",
    "The Company's total share capital is {cap} shares.",
]


def _company_pool(rng: random.Random) -> list[str]:
    names = sorted({f"{p}{s} {i} {f}" for p in PRE for s in SUF for i in INDUSTRY for f in FORM})
    rng.shuffle(names)
    return names


def _person_pool(rng: random.Random) -> list[str]:
    names = [f"{s} {g}" for s in SURNAMES for g in GIVEN]
    rng.shuffle(names)
    return names


def _fin_pool(rng: random.Random) -> list[str]:
    names = [f"{p}{s} {f}" for p in PRE for s in SUF for f in FIN]
    rng.shuffle(names)
    return names


def _split(pool: list[str]) -> tuple[list[str], list[str]]:
    """First fifth for eval, the rest for train: eval never sees a train entity."""
    k = len(pool) // 5
    return pool[k:], pool[:k]


# --- surface forms and their canonical values -----------------------------------------------
def _date(rng: random.Random) -> tuple[str, str]:
    y, m, d = rng.randint(2021, 2025), rng.randint(1, 12), rng.randint(1, 28)
    canon = f"{y:04d}-{m:02d}-{d:02d}"
    style = rng.randrange(4)
    if style == 0:
        return f"{MONTHS[m - 1]} {d}, {y}", canon
    if style == 1:
        return canon, canon
    if style == 2:
        return f"{d} {MONTHS[m - 1]} {y}", canon
    return f"{y}/{m}/{d}", canon


def _scaled(rng: random.Random, lo: int, hi: int) -> int:
    """An integer in [lo, hi) with at most three significant digits (so 45.5 million etc.)."""
    v = rng.randint(lo, hi - 1)
    digits = len(str(v))
    step = 10 ** max(digits - rng.choice([1, 2, 3]), 0)
    return max(step, v // step * step)


def _words(v: int) -> str:
    """45500000 -> '45.5 million', 1200000000 -> '1.2 billion'."""
    unit, name = (10**9, "billion") if v >= 10**9 else (10**6, "million")
    return f"{v / unit:.3f}".rstrip("0").rstrip(".") + f" {name}"


def _money(rng: random.Random, lo: int = 10**7, hi: int = 3 * 10**9) -> tuple[str, str]:
    v = _scaled(rng, lo, hi)
    cur = rng.choices(["CNY", "USD", "HKD"], weights=[6, 3, 1])[0]
    if cur == "USD":
        v = _scaled(rng, lo // 5, hi // 5)
    w, full = _words(v), f"{v:,}"
    forms = {
        "CNY": [f"RMB {w}", f"{w} yuan", f"RMB {full}", f"CNY {w}", f"{full} yuan"],
        "USD": [f"${w}", f"US${w}", f"USD {full}", f"{w} US dollars"],
        "HKD": [f"HK${w}", f"HKD {full}", f"{w} Hong Kong dollars"],
    }[cur]
    return rng.choice(forms), f"{v} {cur}"


def _shares(rng: random.Random, lo: int = 10**5, hi: int = 8 * 10**7) -> tuple[str, str]:
    v = _scaled(rng, lo, hi)
    forms = [f"{v:,} shares", f"{_words(v)} shares" if v >= 10**6 else f"{v} shares"]
    return rng.choice(forms), f"{v} shares"


def _price(rng: random.Random) -> str:
    return f"RMB {rng.randint(300, 9000) / 100:.2f}"


def _header(rng: random.Random, co: str, code: str) -> str:
    return rng.choice(
        [
            f"{co} (stock code: {code}) announces the following.",
            f"Stock code: {code}. Announcement of {co}.",
            f'{co} ("the Company", {code}) hereby announces:',
            f"[{code}] {co} announcement.",
        ]
    )


# --- per-event templates: " | " separates sentences (distractors may go between them) -------
TEMPLATES = {
    "share_buyback": [
        "On {date}, the Company completed its share repurchase via centralized bidding. | "
        "It bought back {shares} in total, paying {money}.",
        "The Company repurchased {shares} of its own shares for a total of {money}. | "
        "The buyback was completed on {date}.",
        "As of {date}, the Company has used {money} to buy back {shares}. | "
        "The repurchased shares will be used for an employee stock ownership plan.",
        "The share buyback plan ended on {date}. | "
        "A total of {money} was spent and {shares} were repurchased at prices up to {price}.",
    ],
    "executive": [
        "On {date}, {title} {person} {verb} holdings by {shares} through the secondary market.",
        "The Company received a notice from its {title}, {person}. | "
        "{person} {act} {shares} of the Company on {date} at an average price of {price}.",
        "{title} {person} {act} {shares} in the period ending {date}. | "
        "The {noun} plan has now been completed.",
        "Shareholding {noun} by a senior executive: {person} ({title}) {act} {shares} on {date}.",
    ],
    "executive_undated": ["{title} {person} recently {verb} holdings in the Company by {shares}."],
    "major_contract": [
        "On {date}, the Company signed a contract with {cp} to supply {product}. | "
        "The contract value is {money}.",
        "The Company won a bid from {cp} worth {money} for {product}. | "
        "The contract was signed on {date}.",
        "The Company and {cp} entered into a major sales contract on {date}. | "
        "Under the contract, the Company will deliver {product} for {money}.",
        "A framework agreement for {product} worth {money} was signed with {cp} on {date}. | "
        "Performance of the contract is expected to benefit future results.",
    ],
    "major_contract_undisclosed": [
        "On {date}, the Company signed a contract with {cp} to supply {product}. | "
        "The contract value is not disclosed for confidentiality reasons.",
        "The Company won a bid from {cp} for {product} on {date}. | "
        "The amount is confidential under the agreement.",
    ],
    "equity_pledge": [
        "The controlling shareholder {person} pledged {shares} of the Company to {fin} on "
        "{date}. | The pledge accounts for {pct} of the shares held by {person}.",
        "On {date}, {person}, the actual controller, pledged {shares} to {fin} for a loan.",
        "The Company was informed that {person} has pledged {shares}. | "
        "The pledgee is {fin} and the pledge took effect on {date}.",
        "Equity pledge notice: shareholder {person} pledged {shares} on {date}, representing "
        "{pct} of the holding. | The pledgee is {fin}.",
    ],
    "dividend": [
        "The Company will pay a cash dividend of {per} per 10 shares, totalling {money}. | "
        "The record date is {date}.",
        "The profit distribution plan has been approved: total cash dividends of {money}. | "
        "Dividends will be paid on {date}, i.e. {per} for every 10 shares.",
        "On {date}, the Company will distribute {money} in cash dividends to all shareholders. | "
        "No bonus shares will be issued.",
        "Annual dividend: {per} per 10 shares (tax included), {money} in total. | "
        "The ex-dividend date is {date}.",
    ],
    "none": [
        "The board of directors held its meeting on {date}. | "
        "All resolutions, including the annual report, were approved.",
        "The Company will hold an online investor briefing on {date}. | "
        "Investors may submit questions in advance.",
        "The Company's registered office will move to a new address on {date}. | "
        "Telephone and email remain unchanged.",
        "The Company has noted recent media reports about its products. | "
        "After verification on {date}, no undisclosed material information was found.",
        "The annual general meeting will be held on {date}. | "
        "Shareholders may vote on site or online.",
    ],
}
MONEY_RANGE = {
    "share_buyback": (2 * 10**7, 10**9),
    "major_contract": (10**7, 3 * 10**9),
    "dividend": (10**7, 2 * 10**9),
}
SHARES_RANGE = {"executive": (5 * 10**4, 5 * 10**6), "equity_pledge": (10**6, 8 * 10**7)}


def _event(rng: random.Random, event_type: str, e: dict) -> tuple[list[str], dict]:
    """Core sentences for one event and its canonical (date, amount, counterparty) fields."""
    kind = "executive" if event_type.startswith("executive_") else event_type
    up = event_type == "executive_shareholding_increase"
    v = {"person": e["person"], "cp": e["counterparty"], "fin": e["fin"], "price": _price(rng)}
    v["date"], date = _date(rng)
    v["money"], money = _money(rng, *MONEY_RANGE.get(kind, (10**7, 10**9)))
    v["shares"], shares = _shares(rng, *SHARES_RANGE.get(kind, (10**6, 3 * 10**7)))
    v["title"], v["product"] = rng.choice(TITLES), rng.choice(PRODUCTS)
    v["verb"] = rng.choice(["increased", "raised"] if up else ["reduced", "cut"])
    v["act"], v["noun"] = ("bought", "increase") if up else ("sold", "reduction")
    v["per"] = f"RMB {rng.randint(5, 80) / 10:.1f}"
    v["pct"] = f"{rng.randint(5, 90)}.{rng.randint(0, 99):02d}%"
    fields = {"date": date, "amount": None, "counterparty_or_person": None}
    if kind == "executive":
        fields.update(amount=shares, counterparty_or_person=e["person"])
        if rng.random() < 0.12:  # undated variant
            kind, fields["date"] = "executive_undated", None
    elif kind == "equity_pledge":
        fields.update(amount=shares, counterparty_or_person=e["person"])
    elif kind == "major_contract":
        fields.update(amount=money, counterparty_or_person=e["counterparty"])
        if rng.random() < 0.15:  # undisclosed value
            kind, fields["amount"] = "major_contract_undisclosed", None
    elif kind in ("share_buyback", "dividend"):
        fields["amount"] = money
    else:  # none: routine notice, no key event
        fields["date"] = None
    return rng.choice(TEMPLATES[kind]).format(**v).split(" | "), fields


def target_json(fields: dict) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(", ", ": "))


def make_example(rng: random.Random, event_type: str, ents: dict) -> dict:
    code = (
        rng.choice(["600", "601", "603", "000", "002", "300", "688"]) + f"{rng.randint(0, 999):03d}"
    )
    e = {
        "company": rng.choice(ents["company"]),
        "person": rng.choice(ents["person"]),
        "counterparty": rng.choice(ents["counterparty"]),
        "fin": rng.choice(ents["fin"]),
    }
    core, fields = _event(rng, event_type, e)
    extras = rng.sample(DISTRACTORS, 3)
    body = list(core)
    header = _header(rng, e["company"], code)
    # Distractors land before, between or after the core sentences; add them one at a time
    # until the announcement reaches 40 words (at least one, at most three).
    for d in extras:
        d = d.format(emp=f"{rng.randint(300, 9000):,}", cap=f"{_scaled(rng, 10**8, 5 * 10**9):,}")
        body.insert(rng.randint(0, len(body)), d)
        if len(" ".join([header, *body]).split()) >= 40:
            break
    text = " ".join([header, *body]).replace("Ltd..", "Ltd.").replace("Inc..", "Inc.")
    out = {"company": e["company"], "stock_code": code, "event_type": event_type, **fields}
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": target_json(out)},
        ],
        "event_type": event_type,
    }


def _rows(rng: random.Random, counts: dict, ents: dict, seen: set[str]) -> list[dict]:
    plan = [t for t in ALL_TYPES for _ in range(counts[t])]
    rng.shuffle(plan)
    rows = []
    for t in plan:
        while True:
            row = make_example(rng, t, ents)
            words = len(row["messages"][1]["content"].split())
            text = row["messages"][1]["content"]
            if text not in seen and 40 <= words <= 120:
                seen.add(text)
                rows.append(row)
                break
    return rows


def generate(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return (train_rows, eval_rows); the same seed always gives the same rows."""
    rng = random.Random(seed)
    pools = {
        "company": _company_pool(rng),
        "person": _person_pool(rng),
        "fin": _fin_pool(rng),
    }
    # Counterparties for contracts are companies too, drawn from a different slice.
    pools["counterparty"] = pools["company"][1::2]
    pools["company"] = pools["company"][0::2]
    train_ents, eval_ents = {}, {}
    for k, pool in pools.items():
        train_ents[k], eval_ents[k] = _split(pool)
    seen: set[str] = set()
    eval_rows = _rows(rng, N_EVAL, eval_ents, seen)
    train_rows = _rows(rng, N_TRAIN, train_ents, seen)
    return train_rows, eval_rows


def dumps_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    train, evl = generate(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evl)):
        (args.out_dir / name).write_text(dumps_jsonl(rows), encoding="utf-8")
    print(f"wrote {len(train)} train and {len(evl)} eval rows to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
