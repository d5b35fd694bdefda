"""Reward functions: answer parsing and comparison, matching, format, length, the code sandbox
(contained escapes score 0), user functions by import path, and the weighted sum."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

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


# ---- the sandbox ----------------------------------------------------------------------------
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


def test_code_tests_pass_and_fail():
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    broken = "def add(a, b) return"
    assert R.code_tests(P * 3, [good, bad, broken], tests=[TESTS] * 3) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "escape",
    [
        "while True:\n    pass",  # CPU / wall clock
        "x = bytearray(4 * 2**30)",  # address space
        "x = [0] * (2**31)",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')",
        "open({target!r}, 'w').write('escaped')",
        "import os\nfd = os.open({target!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
        "import os\nos.system('touch {target}')",
        "import subprocess\nsubprocess.run(['touch', {target!r}])",
        "import shutil\nshutil.copy(__file__, {target!r})",
        "import os\nos.remove({victim!r})",
    ],
)
def test_sandbox_contains_escapes_and_scores_zero(tmp_path, escape):
    target = str(tmp_path / "escaped.txt")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    code = "def add(a, b):\n    return a + b\n" + escape.format(target=target, victim=str(victim))
    score = R.code_tests(P, [code], tests=[TESTS], timeout_s=3, memory_mb=256)
    assert score == [0.0]
    assert not os.path.exists(target)
    assert victim.read_text() == "keep me"


def test_sandbox_allows_work_inside_its_own_dir_and_gets_no_environment():
    code = (
        "import os\nopen('scratch.txt', 'w').write('ok')\n"
        "assert open('scratch.txt').read() == 'ok'\nassert 'HOME' not in os.environ\n"
    )
    os.environ.setdefault("HOME", "/root")
    ok, err = R.run_sandboxed(code)
    assert ok, err


# ---- registry, import paths, the weighted sum ---------------------------------------------
def shout(prompts, completions, **kw):
    return [float(c.isupper()) for c in completions]


def test_resolve_and_combine():
    assert R.resolve("math_answer") is R.math_answer
    assert R.resolve("tests.unit.test_rewards:shout") is shout
    with pytest.raises(StropError, match="unknown reward 'nope'"):
        R.resolve("nope")
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
