"""Final answers of maths solutions, read the way graders read them, and compared exactly.

``extract_answer`` finds the stated answer (the last ``\\boxed{}``, else an ``<answer>`` tag, a
``####`` line or an "answer is"/"Answer:" statement, else the last number) and, within it, the
number a grader would take: units, trailing words, markdown emphasis, currency, thousands
separators and LaTeX delimiters are not part of it. ``answers_equal`` compares integers
exactly (1,450,001 is not 1,450,000), non-integers within a relative tolerance, and
expressions with sympy on a whitelist of characters and tame powers only.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

# A number as graders read one: thousands groups (1,450,000), decimals, a fraction, a sign.
_NUMBER = r"[-−]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:/\d+)?|\.\d+)"
# Where a solution states its final answer, strongest first (after \boxed{}); the last one
# found wins ("Final Answer: The final answer is $18$" -> the "answer is" of that sentence).
_MARKERS = (r"<answer>", r"####", r"\banswer\s*(?:is|was|will be|would be|[:=])")
# After a leading number, what makes it part of an expression (2\sqrt{2}, 3^2, 2 + 3), not
# followed by a unit or words (18 dollars, 18, which ...).
_CONTINUES = re.compile(r"[\\^{(]|\s*(?:\*\*|[*/+\-^])\s*[\d\\(.]")


def _last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else None


def _unmark(s: str, markdown: bool = True) -> str:
    """Markdown emphasis and code ticks (not inside \\boxed{}, where ** is a power), LaTeX
    math delimiters, \\text{...} units, currency."""
    s = (
        re.sub(r"\*\*|__|`" if markdown else "`", "", s)
        .replace("−", "-")
        .replace("{,}", ",")
        .replace("\\%", "%")
    )
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)  # degrees
    s = re.sub(r"\\[()\[\]]|\\\$|\$|\\,|\\!|\\;|\\quad", " ", s)
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}", r" \1 ", s)
    s = re.sub(r"(?:US\$|USD|EUR|GBP|Rs\.?|[€£¥₹])\s*", "", s)
    return s.strip().strip("*_").strip()


def _cut(s: str) -> str:
    """An expression without the words or sentence after it ("2\\sqrt{2} units.")."""
    return re.split(r"\s+(?=[a-zA-Z]{2,})|[,;]\s|\.\s|\.$", s)[0].strip()


def _final_value(segment: str, markdown: bool = True) -> str:
    """The answer within the text a marker points at (its first non-empty line): a leading
    number that does not start an expression (18 dollars, **18**, $1,450,000.); else what
    follows the last '=' (x = 5, 2 + 3 = 5); else the text itself when it is maths
    (\\frac{3}{4}, 2\\sqrt{2}); else its first number."""
    s = _unmark(next((ln for ln in segment.splitlines() if ln.strip()), ""), markdown)
    s = re.sub(r"^(?:approximately|about|around|roughly|exactly|only|just)\s+", "", s, flags=re.I)
    for part in (s, s.rpartition("=")[2].strip()) if "=" in s else (s,):
        lead = re.match(_NUMBER, part)
        if lead and not _CONTINUES.match(part[lead.end() :]):
            return lead.group(0).replace("−", "-")
    s = s.rpartition("=")[2].strip() if "=" in s else s
    if "\\" in s or re.match(r"[\d\s+\-*/^().]+|[\d\s+\-*/^().]*(?:pi|sqrt)", s):
        return _cut(s)
    first = re.search(_NUMBER, s)
    return first.group(0) if first else _cut(s)


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last \\boxed{}, else the last <answer> tag,
    "####" line or "answer is"/"Answer:" statement, else the last number in the text."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return _final_value(boxed, markdown=False)
    flat = re.sub(r"\*\*|__", "", text)  # "**Answer:** 18" -> "Answer: 18"
    for marker in _MARKERS:
        found = list(re.finditer(marker, flat, flags=re.I))
        rest = flat[found[-1].end() :].split("</answer>")[0].lstrip(" \t:") if found else ""
        if rest.strip():
            return _final_value(rest)
    numbers = re.findall(_NUMBER, flat)
    return numbers[-1].replace("−", "-") if numbers else None


_LATEX = [
    (r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)"),
    (r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)"),
    (r"\\(left|right|,|!|;|\s)", ""),
    (r"\\(cdot|times)", "*"),
    (r"\\pi", "pi"),
    (r"\^", "**"),
    (r"\\%|%|\$|\\\$", ""),
    (r"\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}", ""),
]
_SAFE = re.compile(r"^(?:[\d\s+\-*/().]|sqrt|pi)*$")
_EXACT = re.compile(r"-?(?:\d{1,60}(?:\.\d{1,60})?|\.\d{1,60})(?:/\d{1,60})?")


def _exact(s: str) -> Fraction | None:
    """An exact rational for a plain number (no float rounding: 1450001 != 1450000)."""
    if not _EXACT.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except ZeroDivisionError:
        return None


def _normalise(s: str) -> str:
    s = s.strip().strip(".").replace(",", "").replace("−", "-")
    for pattern, repl in _LATEX:
        for _ in range(3):  # nested \frac{\frac{..}{..}}{..}
            s = re.sub(pattern, repl, s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s.strip())  # "x = 3"
    return s.strip()


def _tame(s: str) -> bool:
    """Safe to hand to sympy: exact integer powers make sympy compute 9**9**9 digit by digit
    in one C call that no signal interrupts, so powers are few, small and never stacked."""
    if len(s) > 100 or s.count("**") > 2 or any(len(d) > 30 for d in re.findall(r"\d+", s)):
        return False
    for m in re.finditer(r"\*\*\s*", s):
        exponent = re.match(r"\(?\s*-?\d{1,2}(?:\.\d+)?\s*\)?", s[m.end() :])
        if not exponent or s[m.end() + exponent.end() :].lstrip().startswith("**"):
            return False
    return True


def answers_equal(pred: str, ref: str, rel_tol: float = 1e-6) -> bool:
    """Equal as exact numbers when either is an integer, within ``rel_tol`` when both are
    non-integers, or symbolically via sympy (only on a character whitelist, since sympify
    evaluates Python, and only on tame powers and sizes, see _tame)."""
    a, b = _normalise(pred), _normalise(ref)
    if a == b:
        return True
    x, y = _exact(a), _exact(b)
    if x is not None and y is not None:
        if x.denominator == 1 or y.denominator == 1 or x == y:
            return x == y
        return math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=1e-9)
    if not (_SAFE.match(a) and _SAFE.match(b) and _tame(a) and _tame(b)):
        return False
    try:
        import sympy

        diff = sympy.simplify(sympy.sympify(a) - sympy.sympify(b))
        return bool(diff == 0) or abs(float(diff)) <= rel_tol
    except Exception:  # noqa: BLE001 - any parse failure means "not equal"
        return False


def reference_answer(ref: Any) -> str | None:
    """A data row's answer: what a marker points at in a worked solution (#### 72,
    \\boxed{}), else the field itself when it is short (72, \\frac{1}{2}), else its last number."""
    text = str(ref)
    if _last_boxed(text) is not None or re.search(r"####|<answer>|\banswer\s*(?:is|:)", text, re.I):
        return extract_answer(text)
    return _final_value(text) if len(text.strip()) <= 40 else extract_answer(text)
