"""pii: find personal data and secrets; replace each with a typed placeholder or drop the record.

Detectors are regular expressions plus a validator where the format has one, because a pattern
alone cannot tell a card number from an order number: cards must pass the Luhn checksum and
start with a known issuer prefix, mainland-China resident IDs must carry a valid birth date and
their ISO 7064 MOD 11-2 check character, IBANs must have their country's length and pass the
ISO 13616 mod-97 check, IPv6 candidates must parse. Phone numbers have no checksum; they need a
plausible shape (a leading +country code, a mainland mobile prefix 13x-19x, a bracketed area
code...) and are not taken right after words such as "order" or "invoice" or "订单".

Detectors run in a fixed order and the first to claim a span wins, so "https://user:pw@host"
is one credential URL rather than an e-mail address inside one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from strop.config.schema import Section
from strop.data.prepare.base import Changed, Removed, Result, Step, map_text
from strop.data.records import Record

Action = Literal["replace", "drop", "keep"]

PLACEHOLDERS = {
    "secret": "<SECRET>",
    "url_credentials": "<URL>",
    "email": "<EMAIL>",
    "iban": "<IBAN>",
    "cn_id": "<ID_NUMBER>",
    "card": "<CARD>",
    "ipv6": "<IP>",
    "ipv4": "<IP>",
    "phone": "<PHONE>",
}


class PiiParams(Section):
    email: Action = "replace"
    phone: Action = "replace"
    ipv4: Action = "replace"
    ipv6: Action = "replace"
    card: Action = "replace"
    """Payment card numbers (13-19 digits, Luhn-valid, known issuer prefix)."""
    cn_id: Action = "replace"
    """Mainland-China resident ID numbers (18 characters, date and check character valid)."""
    iban: Action = "replace"
    url_credentials: Action = "replace"
    """URLs with user:password@ or token/key/signature query parameters."""
    secret: Action = "replace"
    """API keys and secrets: AWS, GitHub, OpenAI, Slack, Google, Stripe, JWTs, private key
    blocks, and values assigned to api_key / secret / token / password."""
    include_meta: bool = True
    """Also scrub string fields kept beside the conversation (``meta``)."""
    private_ips: bool = True
    """Count private/loopback addresses (10.x, 192.168.x, 127.0.0.1) as PII too."""


# -- validators -----------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


# Issuer prefixes and the lengths their numbers have (Visa, Mastercard, Amex, Diners, Discover,
# JCB, UnionPay): a Luhn-valid digit run of another shape is most likely not a card.
CARD_SHAPES = [
    (re.compile(r"4"), (13, 16, 19)),
    (re.compile(r"5[1-5]|2[2-7]"), (16,)),
    (re.compile(r"3[47]"), (15,)),
    (re.compile(r"3[0689]"), (14, 16, 19)),
    (re.compile(r"6(?:011|5|4[4-9])"), (16, 19)),
    (re.compile(r"35"), (16, 19)),
    (re.compile(r"62"), (16, 17, 18, 19)),
]


def card_ok(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    shape = any(p.match(digits) and len(digits) in lengths for p, lengths in CARD_SHAPES)
    return shape and luhn_ok(digits)


CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CN_CHECK = "10X98765432"
DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def cn_id_ok(text: str) -> bool:
    s = text.upper()
    if len(s) != 18 or not s[:17].isdigit() or s[0] in "09":
        return False
    year, month, day = int(s[6:10]), int(s[10:12]), int(s[12:14])
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= DAYS[month - 1]):
        return False
    total = sum(int(c) * w for c, w in zip(s[:17], CN_WEIGHTS, strict=True))
    return CN_CHECK[total % 11] == s[17]


# Country code and IBAN length, e.g. DE22: a German IBAN has 22 characters.
IBAN_LENGTHS = {
    c[:2]: int(c[2:])
    for c in (
        "AD24 AE23 AT20 BE16 BG22 BH22 BR29 CH21 CY28 CZ24 DE22 DK18 EE20 ES24 FI18 "
        "FR27 GB22 GR27 HR21 HU28 IE22 IL23 IS26 IT27 KW30 KZ20 LI21 LT20 LU20 LV21 "
        "MC27 MT31 NL18 NO15 PK24 PL28 PT25 QA29 RO24 RS22 SA24 SE24 SI19 SK24 TR26 "
        "UA29"
    ).split()
}


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def ipv6_ok(text: str) -> bool:
    if text.count(":") < 2 or not re.search(r"[0-9a-fA-F]{1,4}:[0-9a-fA-F]{0,4}:", text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# -- detectors ------------------------------------------------------------------------------------
NOT_AFTER_RE = re.compile(
    r"(?:(?<![A-Za-z])(?:order|invoice|ticket|tracking|ref(?:erence)?|sku|serial|isbn|no\.?|id|#|订单号?|编号|"
    r"单号|流水号|版本|version|v))\s*[:#：]?\s*$",
    re.IGNORECASE,
)
VERSION_BEFORE_RE = re.compile(r"(?:(?<![A-Za-z])(?:version|ver\.?|v)|版本)\s*$", re.IGNORECASE)

# (type, pattern, validator or None, look-behind check on the text before the match or None)
Detector = tuple[str, re.Pattern, Callable[[str], bool] | None, re.Pattern | None]
# re.ASCII: \w and \b must not treat CJK characters as word characters, or a phone number
# right after "号码是" would have no word boundary before it.
A = re.ASCII
DETECTORS: list[Detector] = [
    (
        "secret",
        re.compile(
            r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.*?-----END (?:[A-Z]+ )?PRIVATE KEY-----",
            re.DOTALL | A,
        ),
        None,
        None,
    ),
    (
        "secret",
        re.compile(
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
            r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{40,255}\b"
            r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
            r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
            r"|\bAIza[0-9A-Za-z_-]{35}\b"
            r"|\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b"
            r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            A,
        ),
        None,
        None,
    ),
    (
        "url_credentials",
        re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]+:[^\s/@]+@[^\s]+", A),
        None,
        None,
    ),
    (
        "url_credentials",
        re.compile(
            r"\bhttps?://[^\s?#]+\?[^\s#]*?\b(?:access_token|token|api_key|apikey|key|secret|"
            r"password|sig|signature|auth|X-Amz-Signature)=[^&\s#]{6,}[^\s]*",
            re.IGNORECASE | A,
        ),
        None,
        None,
    ),
    # the value of an assignment to a secret-looking name (the name itself is kept)
    (
        "secret",
        re.compile(
            r"(?i)\b(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|"
            r"password|passwd|pwd|client[_-]?secret)[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
            r"(?P<v>(?![\"'<])[^\s\"'<>,;]{8,})",
            A,
        ),
        lambda s: any(c.isdigit() for c in s) or len(s) >= 16,
        None,
    ),
    (
        "email",
        re.compile(
            r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b", A
        ),
        None,
        None,
    ),
    (
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", A),
        iban_ok,
        None,
    ),
    ("cn_id", re.compile(r"(?<![\dA-Za-z])[1-8]\d{16}[\dXx](?![\dA-Za-z])", A), cn_id_ok, None),
    (
        "card",
        re.compile(r"(?<![\w.-])(?<!\d )\d(?:[ -]?\d){12,18}(?![\d-]| \d)", A),
        card_ok,
        NOT_AFTER_RE,
    ),
    (
        "ipv6",
        re.compile(
            r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])",
            A,
        ),
        ipv6_ok,
        None,
    ),
    (
        "ipv4",
        re.compile(
            r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]|\.\d)",
            A,
        ),
        None,
        VERSION_BEFORE_RE,
    ),
    (
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"  # mainland mobile
            r"|(?<![\w])0\d{2,3}-\d{7,8}(?!\d)"  # mainland landline with area code
            r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,2}(?:[ .-]?\d{2,4}){2,4}(?!\d)"  # +CC ...
            r"|(?<![\w])\(\d{3}\) ?\d{3}[ .-]\d{4}(?!\d)"  # (555) 123-4567
            r"|(?<![\w.-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w.-])",  # 555-123-4567
            A,
        ),
        lambda s: 8 <= sum(c.isdigit() for c in s) <= 15,
        NOT_AFTER_RE,
    ),
]
# The gate before the detectors: a text without any of \d{3}, \d.\d, ":", "@", "-----" or a run
# of 20 ASCII letters/digits holds nothing any detector takes. One regex with all six
# alternatives costs more than the detectors on most texts (it tries every alternative at every
# position), so ``may_contain_pii`` asks the same questions in cheap-first order.
DIGIT_SHAPE_RE = re.compile(r"\d{3}|\d\.\d")
ANY_DIGIT_RE = re.compile(r"\d")
# A run of 20 starts the text or follows a non-alphanumeric character: searching from those
# characters skips the retries at every letter of every word.
LONG_RUN_RE = re.compile(r"[^A-Za-z0-9][A-Za-z0-9]{20}")
LONG_RUN_AT_START_RE = re.compile(r"[A-Za-z0-9]{20}")


def may_contain_pii(text: str) -> bool:
    r"""Whether ``text`` has \d{3}, \d.\d, ":", "@", "-----" or [A-Za-z0-9]{20} somewhere."""
    if ":" in text or "@" in text or "-----" in text:
        return True
    if text.isascii():  # substring tests run at C speed; \d also matches non-ASCII digits
        has_digit = any(d in text for d in "0123456789")
    else:
        has_digit = ANY_DIGIT_RE.search(text) is not None
    if has_digit and DIGIT_SHAPE_RE.search(text):
        return True
    return bool(LONG_RUN_RE.search(text) or LONG_RUN_AT_START_RE.match(text))


def find_pii(text: str, enabled: set[str], private_ips: bool = True) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, type) spans, in text order."""
    if not may_contain_pii(text):
        return []
    taken: list[tuple[int, int, str]] = []
    for kind, pattern, valid, not_after in DETECTORS:
        if kind not in enabled:
            continue
        group = "v" if "v" in pattern.groupindex else 0  # replace only the value, if named
        for m in pattern.finditer(text):
            start, end = m.span(group)
            if any(s < end and start < e for s, e, _ in taken):
                continue
            if valid is not None and not valid(m.group(group)):
                continue
            if not_after is not None and not_after.search(text[max(0, start - 16) : start]):
                continue
            if kind == "ipv4" and not private_ips and ipaddress.IPv4Address(m.group(0)).is_private:
                continue
            taken.append((start, end, kind))
    return sorted(taken)


class Pii(Step):
    name = "pii"
    Params = PiiParams

    def __init__(self, params: PiiParams) -> None:
        super().__init__(params)
        self.actions = {k: getattr(params, k) for k in PLACEHOLDERS}
        self.enabled = {k for k, a in self.actions.items() if a != "keep"}

    def apply(self, records: list[Record]) -> list[Result]:
        return [self._one(rec) for rec in records]

    def _one(self, rec: Record) -> Result:
        found: dict[str, int] = {}

        def scrub(text: str) -> str:
            spans = find_pii(text, self.enabled, self.params.private_ips)
            if not spans:
                return text
            out, pos = [], 0
            for start, end, kind in spans:
                found[kind] = found.get(kind, 0) + 1
                out.append(text[pos:start])
                out.append(PLACEHOLDERS[kind])
                pos = end
            out.append(text[pos:])
            return "".join(out)

        new = map_text(rec, scrub)
        meta = rec.meta
        if self.params.include_meta and rec.meta:
            meta = {k: scrub(v) if isinstance(v, str) else v for k, v in rec.meta.items()}
        notes = {f"pii:{k}": n for k, n in found.items()}
        dropped = sorted(k for k in found if self.actions[k] == "drop")
        if dropped:
            return Removed(f"pii:{dropped[0]}", f"contains {', '.join(dropped)}", notes)
        if not found:
            return None
        new = new or rec
        if meta != rec.meta:
            new = replace(new, meta=meta)
        return Changed(new, notes)
