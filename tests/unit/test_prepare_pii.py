"""PII: every type found in hand-made English and Chinese sentences, look-alikes left alone,
precision/recall per type on a generated corpus of planted PII and look-alikes."""

from __future__ import annotations

from collections import Counter

import pytest

from strop.data.prepare import clean_records
from strop.data.prepare.pii import PLACEHOLDERS, cn_id_ok, find_pii, iban_ok, luhn_ok
from strop.data.prepare.synthetic import PII_KINDS, pii_cases
from strop.data.records import Message, Record

ALL = set(PLACEHOLDERS)

FOUND = [
    ("Mail john.doe+news@example.co.uk today", "email", "john.doe+news@example.co.uk"),
    ("邮箱是zhang3@qq.com谢谢", "email", "zhang3@qq.com"),
    ("Call +1 415-555-0132 now", "phone", "+1 415-555-0132"),
    ("我的手机号是138 0013 8000，", "phone", "138 0013 8000"),
    ("手机13912345678", "phone", "13912345678"),
    ("座机 010-68881234", "phone", "010-68881234"),
    ("office (212) 555-0199", "phone", "(212) 555-0199"),
    ("UK +44 20 7946 0958", "phone", "+44 20 7946 0958"),
    ("host 203.0.113.7 is up", "ipv4", "203.0.113.7"),
    ("v6 2001:db8::8a2e:370:7334 ok", "ipv6", "2001:db8::8a2e:370:7334"),
    ("card 4111 1111 1111 1111 exp", "card", "4111 1111 1111 1111"),
    ("amex 378282246310005", "card", "378282246310005"),
    ("身份证号11010519491231002X", "cn_id", "11010519491231002X"),
    ("IBAN GB82 WEST 1234 5698 7654 32 thanks", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("iban DE89370400440532013000", "iban", "DE89370400440532013000"),
    (
        "db postgres://app:s3cret@db:5432/prod",
        "url_credentials",
        "postgres://app:s3cret@db:5432/prod",
    ),
    (
        "get https://x.io/a?id=1&token=abcdef123456",
        "url_credentials",
        "https://x.io/a?id=1&token=abcdef123456",
    ),
    ("key AKIAIOSFODNN7EXAMPLE", "secret", "AKIAIOSFODNN7EXAMPLE"),
    ("token ghp_" + "a" * 36, "secret", "ghp_" + "a" * 36),
    (
        "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz12",
        "secret",
        "sk-proj-abcdefghijklmnopqrstuvwxyz12",
    ),
    ('password: "Tr0ub4dor&3x"', "secret", "Tr0ub4dor&3x"),
]

LOOKALIKES = [
    "Released 2024-01-15 at 10:30:45",
    "version 1.2.3.4 and v2.0.1.7",
    "order #4111111111111112",
    "tracking number 4111111111111112",
    "Order 13812345678 has shipped",
    "订单号 13812345678 已发货",
    "ISBN 978-3-16-148410-0",
    "pi is 3.14159265, price $1,234.56",
    "ratio 16:9 and 4:3, MAC 00:1A:2B:3C:4D:5E",
    "ID 110105194912310021",  # bad check character
    "GB83 WEST 1234 5698 7654 32",  # bad mod-97
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "user@localhost is not an e-mail address with a domain",
    "room 305-1234",
    "password: hunter",  # too short to be a secret
]


@pytest.mark.parametrize(("text", "kind", "value"), FOUND)
def test_each_type_is_found(text: str, kind: str, value: str):
    spans = find_pii(text, ALL)
    assert [(k, text[s:e]) for s, e, k in spans] == [(kind, value)]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_are_left_alone(text: str):
    assert find_pii(text, ALL) == []


def test_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert cn_id_ok("11010519491231002X") and not cn_id_ok("110105194902300021")  # Feb 30
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")


def precision_recall(n: int, seed: int) -> dict[str, tuple[float, float, int]]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for text, truth in pii_cases(n, seed):
        found = {(k, text[s:e]) for s, e, k in find_pii(text, ALL)}
        for item in found:
            (tp if item in truth else fp)[item[0]] += 1
        for item in truth:
            if item not in found:
                fn[item[0]] += 1
    out = {}
    for kind in PII_KINDS:
        p = tp[kind] / max(tp[kind] + fp[kind], 1)
        r = tp[kind] / max(tp[kind] + fn[kind], 1)
        out[kind] = (p, r, tp[kind] + fn[kind])
    return out


def test_planted_corpus_precision_and_recall():
    # seed 11 is not the seed the detectors were tuned on (docs/prepare.md lists both)
    for kind, (p, r, planted) in precision_recall(3000, seed=11).items():
        assert planted >= 100, kind
        assert p >= 0.98 and r >= 0.98, (kind, p, r)


def test_replace_and_drop_per_type_and_meta():
    recs = [
        Record(
            "t:1",
            messages=[
                Message("user", "mail a@b.com or call 13912345678"),
                Message("assistant", "ok"),
            ],
            meta={"contact": "x@y.org", "n": 3},
        ),
        Record(
            "t:2",
            messages=[Message("user", "card 4111 1111 1111 1111"), Message("assistant", "ok")],
        ),
        Record("t:3", messages=[Message("user", "nothing here"), Message("assistant", "ok")]),
    ]
    result = clean_records(recs, [("pii", {"card": "drop"})])
    assert [r.origin for r in result.kept] == ["t:1", "t:3"]
    assert result.kept[0].messages[0].content == "mail <EMAIL> or call <PHONE>"
    assert result.kept[0].meta == {"contact": "<EMAIL>", "n": 3}
    assert result.removed[0]["rule"] == "pii:card"
    s = result.stats[0]
    assert (s.into, s.kept, s.changed, s.removed) == (3, 1, 1, 1)
    assert s.notes == {"pii:email": 2, "pii:phone": 1, "pii:card": 1}
    kept, _ = clean_records(recs[:1], [("pii", {"phone": "keep", "include_meta": False})])
    assert kept[0].messages[0].content == "mail <EMAIL> or call 13912345678"
    assert kept[0].meta["contact"] == "x@y.org"
