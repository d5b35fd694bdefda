"""Reward functions for the online RL stages (grpo, ppo).

A reward function is a plain callable ``(prompts, completions, **row_fields) -> list[float]``:
``prompts`` are the conversations so far (lists of {"role", "content"} messages),
``completions`` the sampled answers (strings), and every other field of the data rows arrives
as a keyword argument holding one value per completion (e.g. ``answer=[...]``), together with
``completion_ids`` (token ids per completion) and the spec's own ``args``. Unknown keywords
must be accepted (``**kwargs``). Names resolve through ``REWARDS``, or ``module:function``
imports a user's function. ``combine`` returns the weighted sum and each function's scores.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from strop.errors import StropError

RewardFn = Callable[..., list[float]]

# ---- maths answers -----------------------------------------------------------------------
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"


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


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last \\boxed{}, else an <answer> tag, else what
    follows "answer is"/"####", else the last number in the text."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in (r"<answer>(.*?)</answer>", r"####\s*([^\n]+)", r"answer is[:\s]*([^\n]+)"):
        found = re.findall(pattern, text, flags=re.S | re.I)
        if found:
            return found[-1].strip().rstrip(".")
    numbers = re.findall(_NUMBER, text)
    return numbers[-1] if numbers else None


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


def _to_number(s: str) -> float | None:
    s = s.strip().replace(",", "")
    try:
        if re.fullmatch(r"-?\d+/\d+", s):
            a, b = s.split("/")
            return int(a) / int(b)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _normalise(s: str) -> str:
    s = s.strip().strip(".").replace(",", "")
    for pattern, repl in _LATEX:
        for _ in range(3):  # nested \frac{\frac{..}{..}}{..}
            s = re.sub(pattern, repl, s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s.strip())  # "x = 3"
    return s.strip()


def answers_equal(pred: str, ref: str, rel_tol: float = 1e-6) -> bool:
    """Numerically or symbolically equal (sympy, on a whitelist of characters only: sympify
    evaluates Python, and completions are untrusted)."""
    a, b = _normalise(pred), _normalise(ref)
    if a == b:
        return True
    x, y = _to_number(a), _to_number(b)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)
    if not (_SAFE.match(a) and _SAFE.match(b)) or max(len(a), len(b)) > 200:
        return False
    try:
        import sympy

        diff = sympy.simplify(sympy.sympify(a) - sympy.sympify(b))
        return bool(diff == 0) or abs(float(diff)) <= rel_tol
    except Exception:  # noqa: BLE001 - any parse failure means "not equal"
        return False


def math_answer(prompts, completions, answer=None, field: str = "answer", **kw) -> list[float]:
    """1.0 where the completion's final answer equals the reference (row field ``answer`` or
    ``field``), else 0.0."""
    refs = answer if field == "answer" else kw.get(field)
    _need(refs, field, "math_answer")
    out = []
    for c, ref in zip(completions, refs, strict=True):
        pred = extract_answer(c)
        gold = extract_answer(str(ref)) if isinstance(ref, str) else str(ref)
        out.append(float(pred is not None and gold is not None and answers_equal(pred, gold)))
    return out


# ---- matching and format -----------------------------------------------------------------
def exact_match(prompts, completions, field: str = "answer", strip: bool = True, **kw):
    """1.0 where the completion equals the row's reference field (whitespace-stripped)."""
    refs = kw.get(field)
    _need(refs, field, "exact_match")
    norm = (lambda s: str(s).strip()) if strip else str
    return [float(norm(c) == norm(r)) for c, r in zip(completions, refs, strict=True)]


def regex_match(prompts, completions, pattern: str | None = None, field: str | None = None, **kw):
    """1.0 where ``pattern`` (or the row field ``field``, as a regex) is found."""
    pats = kw.get(field) if field else [pattern] * len(completions)
    _need(pats if field else pattern, field or "pattern", "regex_match")
    return [
        float(re.search(p, c, re.S) is not None) for c, p in zip(completions, pats, strict=True)
    ]


THINK_ANSWER = r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$"


def format_tags(prompts, completions, pattern: str = THINK_ANSWER, **kw) -> list[float]:
    """1.0 where the whole completion matches ``pattern`` (default: <think>..</think>
    <answer>..</answer>)."""
    return [float(re.match(pattern, c, re.S) is not None) for c in completions]


def _schema_ok(value: Any, schema: dict) -> bool:
    try:
        import jsonschema
    except ImportError:  # a subset: type, required, properties, enum, items
        return _subset_ok(value, schema)
    return jsonschema.Draft202012Validator(schema).is_valid(value)


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _subset_ok(value: Any, schema: dict) -> bool:
    t = schema.get("type")
    if t in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if t == "integer" and not float(value).is_integer():
            return False
    elif t is not None and not isinstance(value, _TYPES[t]):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        if any(k not in value for k in schema.get("required", [])):
            return False
        props = schema.get("properties", {})
        if not all(_subset_ok(value[k], s) for k, s in props.items() if k in value):
            return False
    if isinstance(value, list) and "items" in schema:
        return all(_subset_ok(v, schema["items"]) for v in value)
    return True


def valid_json(prompts, completions, schema: dict | None = None, **kw) -> list[float]:
    """1.0 where the completion (a ```json fence stripped) parses as JSON and, given
    ``schema``, validates against it (jsonschema if installed, else a documented subset)."""
    out = []
    for c in completions:
        text = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", c)
        try:
            value = json.loads(text)
        except ValueError:
            out.append(0.0)
            continue
        out.append(float(schema is None or _schema_ok(value, schema)))
    return out


def length_penalty(
    prompts, completions, max_length: int = 256, buffer: int = 64, **kw
) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13) on tokens (characters when
    token ids are not given): 0 up to max_length - buffer, then linear down to -1 at
    max_length, -1 beyond."""
    ids = kw.get("completion_ids")
    lengths = [len(x) for x in ids] if ids is not None else [len(c) for c in completions]
    start = max_length - buffer
    return [0.0 if n <= start else max(-1.0, (start - n) / max(buffer, 1)) for n in lengths]


def _need(value, name: str, fn: str) -> None:
    if value is None:
        raise StropError(f"reward {fn}: the data rows have no field {name!r}")


# ---- code, in a sandboxed subprocess -----------------------------------------------------
# Installed in the child before the user's code: audit hooks cannot be removed from Python.
# Best-effort containment for model-written code (no network, no process spawning, no writes
# outside the temporary working dir) plus kernel rlimits; not a security boundary against a
# determined attacker (use a container or VM for that).
_PRELUDE = r"""
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_DENY = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
         "os.fork", "os.forkpty", "os.kill", "os.killpg", "ctypes.", "pty.", "os.setuid")
_PATHS = ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown",
          "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.")
def _inside(p):
    try:
        return os.path.realpath(os.fsdecode(p)).startswith(_ROOT + os.sep)
    except Exception:
        return False
def _hook(event, args):
    if event.startswith(_DENY):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "open" and args and not isinstance(args[0], int):
        mode, flags = args[1] or "", args[2] or 0
        if (any(c in mode for c in "wax+") or flags & _WRITE) and not _inside(args[0]):
            raise PermissionError("sandbox: write outside the working dir")
    if event.startswith(_PATHS) and args and not all(
        _inside(a) for a in args[:2] if isinstance(a, (str, bytes))
    ):
        raise PermissionError("sandbox: " + event + " outside the working dir")
sys.addaudithook(_hook)
del _hook
"""


def _limits(cpu_s: int, memory_mb: int):
    def apply() -> None:
        os.setsid()  # its own process group: the wall-clock kill takes every child
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        mem = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**22, 2**22))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_sandboxed(
    code: str, timeout_s: float = 5.0, cpu_s: int = 5, memory_mb: int = 512
) -> tuple[bool, str]:
    """Run ``code`` in a fresh isolated Python (-I: no env vars, no user site; empty env;
    a temporary cwd; CPU, address-space and file-size limits; wall-clock timeout).
    Returns (exited with 0, last 2000 characters of stderr)."""
    with tempfile.TemporaryDirectory(prefix="strop-sandbox-") as tmp:
        path = os.path.join(tmp, "main.py")
        with open(path, "w") as f:
            f.write(_PRELUDE + "\n" + code)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", path],
                cwd=tmp,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_limits(cpu_s, memory_mb),
            )
        except OSError as e:
            return False, str(e)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            return False, "wall-clock timeout"
        return proc.returncode == 0, err.decode(errors="replace")[-2000:]


def extract_code(text: str) -> str:
    """The last ```python fenced block (or any fence), else the whole completion."""
    blocks = re.findall(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    return blocks[-1] if blocks else text


def code_tests(
    prompts, completions, field: str = "tests", timeout_s: float = 5.0, memory_mb: int = 512, **kw
) -> list[float]:
    """1.0 where the completion's code followed by the row's ``tests`` (asserts) exits 0."""
    tests = kw.get(field)
    _need(tests, field, "code_tests")
    cpu = max(1, math.ceil(timeout_s))
    return [
        float(run_sandboxed(f"{extract_code(c)}\n\n{t}\n", timeout_s, cpu, memory_mb)[0])
        for c, t in zip(completions, tests, strict=True)
    ]


# ---- reward model --------------------------------------------------------------------------
_RM_CACHE: dict[str, tuple] = {}


def reward_model(prompts, completions, path: str | None = None, batch_size: int = 8, **kw):
    """The score of a ``stage: rm`` reward model (``path``: its final/ dir) on prompt +
    completion."""
    if path is None:
        raise StropError("reward reward_model: args.path (a stage-rm final/ dir) is required")
    if path not in _RM_CACHE:
        from strop.reward import load_reward_model

        _RM_CACHE[path] = load_reward_model(path, "fp32")
    model, tok = _RM_CACHE[path]
    convs = [
        [*p, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions, strict=True)
    ]
    from strop.reward import score

    return score(model, tok, convs, batch_size)


REWARDS: dict[str, RewardFn] = {
    "math_answer": math_answer,
    "exact_match": exact_match,
    "regex_match": regex_match,
    "format_tags": format_tags,
    "valid_json": valid_json,
    "length_penalty": length_penalty,
    "code_tests": code_tests,
    "reward_model": reward_model,
}


def resolve(name: str, where: str = "grpo.rewards") -> RewardFn:
    """A registered name, or ``package.module:function`` for a user's own function; errors
    name the config key ``where``."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise StropError(
            f"{where}: unknown reward {name!r} (known: {', '.join(REWARDS)}; or give "
            "'module:function')"
        )
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise StropError(f"{where}: cannot import {name!r}: {e}") from None
    if not callable(fn):
        raise StropError(f"{where}: {name!r} is not callable")
    return fn


def combine(
    specs: list, prompts: list, completions: list[str], fields: dict[str, list]
) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted sum per completion, each function's raw scores by name). ``specs`` items
    have ``name``, ``weight`` and ``args``."""
    total = [0.0] * len(completions)
    each: dict[str, list[float]] = {}
    for spec in specs:
        scores = resolve(spec.name)(prompts, completions, **{**fields, **spec.args})
        if len(scores) != len(completions):
            raise StropError(
                f"reward {spec.name}: returned {len(scores)} scores for {len(completions)} "
                "completions"
            )
        scores = [float(s) for s in scores]
        key = spec.name.rpartition(":")[2]
        each[key if key not in each else f"{key}.{len(each)}"] = scores
        total = [t + spec.weight * s for t, s in zip(total, scores, strict=True)]
    return total, each
