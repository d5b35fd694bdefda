"""Reward functions: answer parsing and comparison (on a few hundred generated solution
phrasings), matching, format, length, code_tests' reasons, the per-completion time budget and
the violation/timeout/error counts, user functions by import path, and the weighted sum."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import pytest

from strop import sandbox as S
from strop.errors import StropError
from strop.train import rewards as R

P = [[{"role": "user", "content": "q"}]]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{x^{2}} then \\boxed{7}", "7"),
        ("<think>3+4</think><answer> 7 </answer>", "7"),
        ("Work... #### 1,234", "1,234"),
        ("The answer is: 42.", "42"),
        ("I have 3 apples and 5 pears, 8 in all", "8"),
        ("no digits here", None),
    ],
)
def test_extract_answer(text, want):
    assert R.extract_answer(text) == want


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("0.5", "1/2", True),
        ("\\frac{1}{2}", "0.5", True),
        ("1,000", "1000", True),
        ("x = 3", "3", True),
        ("\\$12", "12", True),
        ("2\\sqrt{2}", "sqrt(8)", False),  # "2sqrt(2)": not a product without *
        ("2*\\sqrt{2}", "sqrt(8)", True),
        ("\\frac{\\pi}{2}", "pi/2", True),
        ("3", "4", False),
        ("__import__('os')", "0", False),  # never handed to sympify
    ],
)
def test_answers_equal(a, b, equal):
    assert R.answers_equal(a, b) is equal


def test_math_answer_reward():
    comps = ["... \\boxed{12}", "it is 13", "answer is 1/4", "nothing"]
    got = R.math_answer(P * 4, comps, answer=["12", "12", "0.25", "3"])
    assert got == [1.0, 0.0, 1.0, 0.0]
    assert R.math_answer(P, ["#### 5"], answer=[5]) == [1.0]  # numeric reference field
    with pytest.raises(StropError, match="no field 'answer'"):
        R.math_answer(P, ["1"])


def test_issue_14_misreadings():
    gold = ["18", "18", "1450000", "1450000", "1450000", "2.5"]
    comps = [
        "The answer is 18 dollars.",
        "The answer is **18**.",
        "The answer is 1,450,001.",
        "#### $1,450,000",
        "\\boxed{1{,}450{,}000}",
        "The answer is 2.5000001 hours.",
    ]
    assert R.math_answer(P * 6, comps, answer=gold) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert R.answers_equal("1450001", "1450000") is False  # integers: exact, at any size
    assert R.answers_equal("1450000.5", "1450000") is False
    assert R.answers_equal("0.3333333", "1/3") is True  # non-integers: rel tol 1e-6


def test_huge_powers_return_at_once():
    t0 = time.monotonic()
    comps = ["\\boxed{9**9**9}", "\\boxed{(9**99)**99**9}", "The answer is 9^{9^{9}}"]
    assert R.math_answer(P * 3, comps, answer=["1"] * 3) == [0.0] * 3
    assert R.answers_equal("2**10", "1024") is True  # a tame power still works
    assert time.monotonic() - t0 < 2


# Solution texts as models write them: a word problem's working (with distracting numbers),
# then the final answer in one of many phrasings and formats.
PROBLEMS = [  # (working, answer(a, b, c), unit)
    (
        "A baker bakes {a} trays of {b} rolls and sells {c} of them. {a} x {b} = {ab}.",
        lambda a, b, c: a * b - c,
        "rolls",
    ),
    (
        "Mia saves ${a} a week for {b} weeks and then spends ${c}. She saved {a} * {b} = {ab}.",
        lambda a, b, c: a * b - c,
        "dollars",
    ),
    (
        "A firm pays {a} workers ${b}00 a day for {c} days. Per day: {a} * {b}00 = {ab}00.",
        lambda a, b, c: a * b * 100 * c,
        "dollars",
    ),
    (
        "A tank holds {ab} liters and loses {c} liters in each of {a} hours.",
        lambda a, b, c: a * b - c * a,
        "liters",
    ),
    (
        "{a} friends share {b} pizzas of 8 slices and eat {c} slices: {b} * 8 = {b8}.",
        lambda a, b, c: b * 8 - c,
        "slices",
    ),
    (
        "A ribbon of {a} m is cut into 4 equal pieces; {c} spare pieces are {b} m long.",
        lambda a, b, c: a / 4,
        "m",
    ),
]
FINALS = [
    "The answer is {x}.",
    "The answer is {x} {unit}.",
    "The answer is **{x}**.",
    "**Answer:** {x}",
    "#### {x}",
    "Therefore, the final answer is $\\boxed{{{x}}}$.",
    "So the result is {x} {unit} in total.",
    "Final Answer: The final answer is ${x}$. I hope it is correct.",
    "The answer is: {x} {unit}, which is {c} more than before.",
    "<answer>{x}</answer>",
    "Answer: {x} {unit} (about {c} per day).",
    "Thus the answer is \\boxed{{{x}\\text{{ {unit}}}}}.",
    "The answer is ${x}.",
    "So she ends up with **{x} {unit}**.\nI checked it twice: {c} + {c} = {cc}.\n#### {x}",
]
FORMATS = [str, lambda v: f"{v:,}", lambda v: f"{v:,.2f}"]


def _phrasings(seed: int = 18):
    """(completion, gold, should match) for correct and wrong final answers."""
    rng = random.Random(seed)
    for work, answer, unit in PROBLEMS:
        for final in FINALS:
            a, b, c = rng.randint(3, 60), rng.randint(4, 90), rng.randint(2, 9)
            gold = answer(a, b, c)
            gold = int(gold) if float(gold).is_integer() else gold
            text = work.format(a=a, b=b, c=c, ab=a * b, b8=b * 8)
            for fmt in FORMATS if isinstance(gold, int) else [str, FORMATS[2]]:
                for x in (gold, gold + 1, gold * 10, c):  # right, off by one, a slip, a distractor
                    line = final.format(x=fmt(x), unit=unit, c=c, cc=2 * c)
                    yield f"{text}\n{line}", gold, x == gold


def test_math_answer_on_generated_phrasings():
    cases = list(_phrasings())
    got = R.math_answer(P * len(cases), [t for t, _, _ in cases], answer=[g for _, g, _ in cases])
    false_pos = [
        (t, g) for (t, g, right), s in zip(cases, got, strict=True) if s == 1.0 and not right
    ]
    false_neg = [(t, g) for (t, g, right), s in zip(cases, got, strict=True) if s == 0.0 and right]
    assert len(cases) >= 900  # about a quarter right, the rest wrong
    assert not false_pos, f"{len(false_pos)} false positives of {len(cases)}: {false_pos[:3]}"
    assert not false_neg, f"{len(false_neg)} false negatives of {len(cases)}: {false_neg[:3]}"


def test_matching_format_json_length():
    assert R.exact_match(P * 2, [" yes\n", "no"], answer=["yes", "yes"]) == [1.0, 0.0]
    assert R.exact_match(P, ["A"], field="label", label=["A"]) == [1.0]
    assert R.regex_match(P * 2, ["id: 12", "id: x"], pattern=r"id: \d+") == [1.0, 0.0]
    assert R.regex_match(P * 2, ["cat", "dog"], field="rx", rx=["c.t", "c.t"]) == [1.0, 0.0]
    good = "<think>add them</think>\n<answer>7</answer>"
    assert R.format_tags(P * 3, [good, "<answer>7</answer>", good + " extra"]) == [1.0, 0.0, 0.0]
    schema = {
        "type": "object",
        "required": ["event"],
        "properties": {"event": {"enum": ["merger", "ipo"]}, "n": {"type": "integer"}},
    }
    comps = ['{"event": "ipo", "n": 2}', '```json\n{"event": "merger"}\n```', '{"event": "x"}']
    assert R.valid_json(P * 3, comps) == [1.0, 1.0, 1.0]
    assert R.valid_json(P * 4, [*comps, "{bad"], schema=schema) == [1.0, 1.0, 0.0, 0.0]
    assert R._subset_ok({"event": "ipo", "n": 2.5}, schema) is False
    ids = [[0] * 8, [0] * 14, [0] * 16, [0] * 30]
    got = R.length_penalty(P * 4, [""] * 4, max_length=16, buffer=8, completion_ids=ids)
    assert got == [0.0, -0.75, -1.0, -1.0]


# ---- code_tests (the escapes and bounds: test_sandbox.py) -------------------------------------
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
needs_sandbox = pytest.mark.skipif(S.detect() is None, reason="no sandbox backend works here")


@needs_sandbox
def test_code_tests_pass_and_fail_with_reasons():
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    broken = "def add(a, b) return"
    bomb = "```python\nx = bytearray(2**33)\n```"
    got = R.code_tests(P * 4, [good, bad, broken, bomb], tests=[TESTS] * 4)
    assert got == [1.0, 0.0, 0.0, 0.0]
    assert got.kinds == ["", "failed", "failed", "violation"]
    assert got.reasons[0] == "" and "AssertionError" in got.reasons[1]
    assert "SyntaxError" in got.reasons[2] and got.reasons[3] == "memory limit"


@needs_sandbox
def test_violations_are_counted_and_their_reasons_kept():
    stats = R.RewardStats(max_samples=1)
    spec = SimpleNamespace(name="code_tests", weight=1.0, args={"timeout_s": 1})
    comps = ["def add(a, b):\n    return a + b", "open('/etc/passwd').read()", "while 1: pass"]
    total, each = R.combine([spec], P * 3, comps, {"tests": [TESTS] * 3}, stats)
    assert total == [1.0, 0.0, 0.0] and each == {"code_tests": [1.0, 0.0, 0.0]}
    assert stats.reasons[0] == "" and "/etc/passwd" in stats.reasons[1]
    assert stats.reasons[2] in ("code_tests: timeout after 1s", "code_tests: cpu limit")
    assert len(stats.samples) == 1 and "/etc/passwd" in stats.samples[0]
    counted = stats.take()
    assert counted["reward/violations"] + counted["reward/timeouts"] == 2
    assert counted["reward/errors"] == 0 and stats.take()["reward/violations"] == 0


# ---- a time budget per completion; errors do not end the run --------------------------------
def fussy(prompts, completions, **kw):
    """A user's reward with a hang and a bug in it."""
    out = []
    for c in completions:
        if c == "hang":
            while True:
                pass
        out.append(1 / int(c))
    return out


def test_a_reward_that_hangs_or_raises_scores_zero_and_is_counted():
    stats = R.RewardStats()
    spec = SimpleNamespace(name="tests.unit.test_rewards:fussy", weight=1.0, args={"budget_s": 0.3})
    t0 = time.monotonic()
    total, _ = R.combine([spec], P * 3, ["2", "hang", "0"], {}, stats)
    assert time.monotonic() - t0 < 3
    assert total == [0.5, 0.0, 0.0]
    assert stats.reasons == [
        "",
        "fussy: timeout after 0.3s",
        "fussy: ZeroDivisionError: division by zero",
    ]
    assert stats.take() == {"reward/violations": 0.0, "reward/timeouts": 1.0, "reward/errors": 1.0}


def test_config_mistakes_still_stop_the_run():
    spec = SimpleNamespace(name="math_answer", weight=1.0, args={})
    with pytest.raises(StropError, match="no field 'answer'"):
        R.combine([spec], P, ["1"], {})


# ---- registry, import paths, the weighted sum ---------------------------------------------
def shout(prompts, completions, **kw):
    return [float(c.isupper()) for c in completions]


def test_resolve_and_combine():
    assert R.resolve("math_answer") is R.math_answer
    assert R.resolve("tests.unit.test_rewards:shout") is shout
    with pytest.raises(StropError, match="unknown reward 'nope'"):
        R.resolve("nope")
    with pytest.raises(StropError, match="write it as 'module:function', here 'mypkg.rewards:brev"):
        R.resolve("mypkg.rewards.brevity")  # the dotted path people write first
    with pytest.raises(StropError, match="cannot import"):
        R.resolve("tests.unit.test_rewards:missing")
    specs = [
        SimpleNamespace(name="math_answer", weight=1.0, args={}),
        SimpleNamespace(name="tests.unit.test_rewards:shout", weight=0.5, args={}),
        SimpleNamespace(name="regex_match", weight=-2.0, args={"pattern": "bad"}),
    ]
    total, each = R.combine(specs, P * 3, ["7", "SEVEN", "7 bad"], {"answer": ["7", "7", "7"]})
    assert each == {
        "math_answer": [1.0, 0.0, 1.0],
        "shout": [0.0, 1.0, 0.0],
        "regex_match": [0.0, 0.0, 1.0],
    }
    assert total == [1.0, 0.5, -1.0]
