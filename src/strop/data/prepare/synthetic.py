"""Deterministic synthetic data with planted problems and their ground truth, for the example
sample file, the tests and the throughput benchmark.

``chat_corpus`` yields chat rows (English and Chinese) with planted exact duplicates (with
case/whitespace noise that normalisation removes), near-duplicates (one word or character of
a long answer changed), PII of every type, PII look-alikes, and filter bait (refusals,
repetition). ``pii_cases`` yields sentences with the exact PII spans they contain (possibly
none, for look-alikes), to measure detector precision and recall.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

from strop.data.prepare.pii import CN_CHECK, CN_WEIGHTS, IBAN_LENGTHS

WORDS = (  # noqa: SIM905  (a word list reads better as text)
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy process music market sense nation plan college interest "
    "death experience effect use class control care field development role effort rate heart "
    "drug show leader light voice wife police mind price report decision son view relationship "
    "town road arm difference value building action model season society tax director position "
    "player record paper space ground form event official matter center couple site project "
    "activity star table need court oil situation cost industry figure street image phone data"
).split()
HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说"
    "产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使"
    "点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明"
    "看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料"
)


def _english(rng: random.Random, lo: int, hi: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def _chinese(rng: random.Random, lo: int, hi: int) -> str:
    chars = [rng.choice(HANZI) for _ in range(rng.randint(lo, hi))]
    for i in range(12, len(chars), 15):
        chars[i] = "，"
    return "".join(chars) + "。"


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def cn_id(rng: random.Random, valid: bool = True) -> str:

    body = (
        f"{rng.choice(['110105', '310104', '440305', '510107', '330106'])}"
        f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        f"{rng.randint(0, 999):03d}"
    )
    check = CN_CHECK[sum(int(c) * w for c, w in zip(body, CN_WEIGHTS, strict=True)) % 11]
    if not valid:
        check = next(c for c in "0123456789X" if c != check)
    return body + check


def iban(rng: random.Random, valid: bool = True) -> str:

    country = rng.choice(["DE", "GB", "FR", "NL", "ES", "IT", "CH"])
    n = IBAN_LENGTHS[country] - 4
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
        bban += "".join(rng.choice(string.digits) for _ in range(n - 4))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(n))
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(digits) % 97
    if not valid:
        check = (check + 1 + rng.randint(0, 50)) % 97 + 2
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4)) if rng.random() < 0.5 else raw


def _alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def pii_value(kind: str, rng: random.Random) -> str:
    """One realistic value of a PII type."""
    if kind == "email":
        user = rng.choice(["john.doe", "li.wei", "a.b+news", "mary_k", "zhang3"]) + str(
            rng.randint(1, 99)
        )
        return f"{user}@{rng.choice(['example.com', 'mail.example.cn', 'corp.co.uk', 'qq.com'])}"
    if kind == "phone":
        return rng.choice(
            [
                f"+1 415-555-{rng.randint(1000, 9999)}",
                f"+44 20 7946 {rng.randint(1000, 9999)}",
                f"+86 138 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
                f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(10000000, 99999999)}",
                f"010-{rng.randint(60000000, 69999999)}",
                f"({rng.randint(200, 999)}) 555-{rng.randint(1000, 9999)}",
                f"+49 30 {rng.randint(1000000, 9999999)}",
            ]
        )
    if kind == "ipv4":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if kind == "ipv6":
        groups = [f"{rng.randint(0, 65535):x}" for _ in range(8)]
        return rng.choice(
            [":".join(groups), f"2001:db8::{groups[0]}:{groups[1]}", f"fe80::{groups[2]}"]
        )
    if kind == "card":
        prefix, length = rng.choice(
            [("4", 16), ("51", 16), ("55", 16), ("34", 15), ("37", 15), ("6011", 16)]
        )
        num = luhn_complete(prefix, length, rng)
        sep = rng.choice(["", " ", "-"])
        return sep.join(num[i : i + 4] for i in range(0, len(num), 4)) if sep else num
    if kind == "cn_id":
        return cn_id(rng)
    if kind == "iban":
        return iban(rng)
    if kind == "url_credentials":
        return rng.choice(
            [
                f"https://admin:{_alnum(rng, 10)}@example.com/db",
                f"postgres://app:{_alnum(rng, 12)}@db.internal:5432/prod",
                f"https://api.example.com/v1/items?access_token={_alnum(rng, 24)}",
            ]
        )
    if kind == "secret":
        return rng.choice(
            [
                "AKIA" + _alnum(rng, 16, string.ascii_uppercase + string.digits),
                "ghp_" + _alnum(rng, 36),
                "sk-proj-" + _alnum(rng, 40),
                "xoxb-" + _alnum(rng, 12, string.digits) + "-" + _alnum(rng, 24),
                "AIza" + _alnum(rng, 35),
            ]
        )
    raise ValueError(kind)


PII_KINDS = ("email", "phone", "ipv4", "ipv6", "card", "cn_id", "iban", "url_credentials", "secret")


def lookalike(rng: random.Random) -> str:
    """Numbers and strings that resemble PII but are not: the detectors must leave them."""
    bad_card = luhn_complete("4", 16, rng)
    bad_card = bad_card[:-1] + str((int(bad_card[-1]) + 1) % 10)
    return rng.choice(
        [
            f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            f"version {rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
            f"v{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)}",
            f"order #{rng.randint(10**7, 10**9)}",
            f"订单号 {rng.randint(10**13, 10**14 - 1)}",
            f"tracking number {bad_card}",
            f"ID {cn_id(rng, valid=False)}",
            f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(100, 999)}-{rng.randint(10000, 99999)}-{rng.randint(0, 9)}",
            f"${rng.randint(1, 999)},{rng.randint(100, 999)}.{rng.randint(10, 99)}",
            f"{rng.random() * 100:.6f}",
            f"commit {_alnum(rng, 40, '0123456789abcdef')}",
            f"{_alnum(rng, 8, '0123456789abcdef')}-{_alnum(rng, 4, '0123456789abcdef')}-4{_alnum(rng, 3, '0123456789abcdef')}",
            f"ratio {rng.randint(1, 21)}:{rng.randint(1, 9)}",
            f"order {rng.choice('3456789')}{rng.randint(10**9, 10**10 - 1)}",
            iban(rng, valid=False),
            f"room {rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        ]
    )


def pii_cases(n: int, seed: int = 0) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(sentence, [(type, value), ...]) — about 60% with one PII value, the rest look-alikes."""
    rng = random.Random(seed)
    for _ in range(n):
        lead = _english(rng, 3, 8) if rng.random() < 0.6 else _chinese(rng, 6, 14)
        if rng.random() < 0.6:
            kind = rng.choice(PII_KINDS)
            value = pii_value(kind, rng)
            yield f"{lead} {value} {_english(rng, 2, 5)}", [(kind, value)]
        else:
            yield f"{lead} {lookalike(rng)} {_english(rng, 2, 5)}", []


def _unique(rng: random.Random, cjk: bool) -> list[dict[str, str]]:
    if cjk:
        return [
            {"role": "user", "content": _chinese(rng, 8, 20)},
            {"role": "assistant", "content": _chinese(rng, 80, 160)},
        ]
    return [
        {"role": "user", "content": _english(rng, 6, 16)},
        {"role": "assistant", "content": _english(rng, 80, 140)},
    ]


def _noisy_copy(messages: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    out = [dict(m) for m in messages]
    m = out[rng.randrange(len(out))]
    m["content"] = rng.choice(
        [m["content"].upper(), "  " + m["content"].replace(" ", "   "), m["content"] + "\n"]
    )
    return out


def _near_copy(messages: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    out = [dict(m) for m in messages]
    answer = out[-1]["content"]
    if " " in answer:
        words = answer.split(" ")
        words[rng.randrange(1, len(words) - 1)] = "zebra"
        out[-1]["content"] = " ".join(words)
    else:
        i = rng.randrange(20, len(answer) - 20)
        out[-1]["content"] = answer[:i] + "鹿" + answer[i + 1 :]
    return out


def chat_corpus(
    n: int,
    seed: int = 0,
    dup_rate: float = 0.1,
    near_rate: float = 0.1,
    pii_rate: float = 0.1,
    cjk_rate: float = 0.3,
    lookalike_rate: float = 0.05,
    refusal_rate: float = 0.0,
    pool: int = 2000,
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(row, truth) pairs. truth["kind"]: unique | exact_dup | near_dup | refusal, plus
    truth["pii"] (the type planted, if any) and truth["of"] (index of the original row).

    Duplicates copy one of the last ``pool`` unique rows, so memory stays bounded for any n.
    A row carrying PII is always unique, so dedup and PII counts do not interact."""
    rng = random.Random(seed)
    recent: list[tuple[int, list[dict[str, str]]]] = []
    for i in range(n):
        roll = rng.random()
        truth: dict[str, Any] = {"kind": "unique"}
        if recent and roll < dup_rate:
            j, orig = rng.choice(recent)
            messages, truth = _noisy_copy(orig, rng), {"kind": "exact_dup", "of": j}
        elif recent and roll < dup_rate + near_rate:
            j, orig = rng.choice(recent)
            messages, truth = _near_copy(orig, rng), {"kind": "near_dup", "of": j}
        elif roll < dup_rate + near_rate + refusal_rate:
            messages = _unique(rng, False)
            messages[-1]["content"] = (
                "I'm sorry, but I can't help with that. " + messages[-1]["content"][:40]
            )
            truth = {"kind": "refusal"}
        else:
            messages = _unique(rng, rng.random() < cjk_rate)
            extra = rng.random()
            if extra < pii_rate:
                kind = rng.choice(PII_KINDS)
                messages[0]["content"] += f" {pii_value(kind, rng)} "
                truth["pii"] = kind
            elif extra < pii_rate + lookalike_rate:
                messages[0]["content"] += f" {lookalike(rng)}"
            else:
                recent.append((i, messages))
                if len(recent) > pool:
                    recent.pop(rng.randrange(len(recent)))
        yield {"messages": messages, "id": i}, truth
