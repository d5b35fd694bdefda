"""Reward functions for the online RL stages (grpo, ppo).

A reward function is a plain callable ``(prompts, completions, **row_fields) -> list[float]``:
``prompts`` are the conversations so far (lists of {"role", "content"} messages),
``completions`` the sampled answers (strings), and every other field of the data rows arrives
as a keyword argument holding one value per completion (e.g. ``answer=[...]``), together with
``completion_ids`` (token ids per completion) and the spec's own ``args``. Unknown keywords
must be accepted (``**kwargs``). Names resolve through ``REWARDS``, or ``module:function``
imports a user's function. ``combine`` returns the weighted sum and each function's scores;
it calls every function under a time budget per completion (a timeout or an exception scores
0, with its reason) and can count violations, timeouts and errors in a RewardStats. A function
may return ``Scores`` (a list with per-completion reasons), as code_tests does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from strop.errors import StropError
from strop.reward import load_reward_model, score
from strop.sandbox import run
from strop.train.answers import answers_equal, extract_answer, reference_answer

RewardFn = Callable[..., list[float]]


# ---- maths answers (parsing and comparison live in strop.train.answers) ---------------------
def math_answer(prompts, completions, answer=None, field: str = "answer", **kw) -> list[float]:
    """1.0 where the completion's final answer equals the reference (row field ``answer`` or
    ``field``), else 0.0."""
    refs = answer if field == "answer" else kw.get(field)
    _need(refs, field, "math_answer")
    out = []
    for c, ref in zip(completions, refs, strict=True):
        pred, gold = extract_answer(c), reference_answer(ref)
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


# ---- code, in the sandbox ----------------------------------------------------------------
def extract_code(text: str) -> str:
    """The last ```python fenced block (or any fence), else the whole completion."""
    blocks = re.findall(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    return blocks[-1] if blocks else text


def code_tests(
    prompts,
    completions,
    field: str = "tests",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    sandbox: str | None = None,
    **kw,
) -> Scores:
    """1.0 where the completion's code followed by the row's ``tests`` (asserts) exits 0 in
    the sandbox (strop.sandbox: namespaces, no network, a minimal read-only view, limits);
    ``sandbox``: auto | bwrap | namespaces | unsafe. Each 0 carries its reason."""
    tests = kw.get(field)
    _need(tests, field, "code_tests")
    runs = [
        run(
            f"{extract_code(c)}\n\n{t}\n", timeout_s=timeout_s, memory_mb=memory_mb, backend=sandbox
        )
        for c, t in zip(completions, tests, strict=True)
    ]
    return Scores([r.ok for r in runs], [r.reason for r in runs], [r.kind for r in runs])


# ---- reward model --------------------------------------------------------------------------
_RM_CACHE: dict[str, tuple] = {}


def reward_model(prompts, completions, path: str | None = None, batch_size: int = 8, **kw):
    """The score of a ``stage: rm`` reward model (``path``: its final/ dir) on prompt +
    completion."""
    if path is None:
        raise StropError("reward reward_model: args.path (a stage-rm final/ dir) is required")
    if path not in _RM_CACHE:
        _RM_CACHE[path] = load_reward_model(path, "fp32")
    model, tok = _RM_CACHE[path]
    convs = [
        [*p, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions, strict=True)
    ]

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
        module, dot, attr = name.rpartition(".")
        hint = (  # mypkg.rewards.brevity: the user meant an import path
            f"; for your own function write it as 'module:function', here {module + ':' + attr!r}"
            if dot and module and attr
            else "; or give 'module:function' for your own function"
        )
        raise StropError(f"{where}: unknown reward {name!r} (known: {', '.join(REWARDS)}){hint}")
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise StropError(f"{where}: cannot import {name!r}: {e}") from None
    if not callable(fn):
        raise StropError(f"{where}: {name!r} is not callable")
    return fn


# ---- guarded calls: a time budget per completion, reasons, counts ---------------------------
BUDGET_S = 10.0
"""Seconds each completion may take in one reward function (``args.budget_s`` overrides)."""
# Cheap pure functions of one completion: called per completion, so a budget is per item.
_PER_ITEM = {
    "math_answer",
    "exact_match",
    "regex_match",
    "format_tags",
    "valid_json",
    "length_penalty",
    "code_tests",
}
_UNBUDGETED = {"reward_model"}  # our own forward passes; the first call loads the model


class RewardTimeout(BaseException):
    """Raised by the watchdog. A BaseException, so reward code's ``except Exception`` (e.g.
    answers_equal's parse guard) cannot swallow it."""


@contextlib.contextmanager
def _budget(seconds: float | None):
    """Raise RewardTimeout after ``seconds`` via SIGALRM. A thread cannot be killed and a
    subprocess per call costs more than most rewards take, so a signal it is: it interrupts
    Python code between bytecodes (sympy, the re matcher), not one long C call, which is why
    math_answer also refuses huge powers. Main thread only, and never over someone else's
    timer; elsewhere the input guards are all there is."""
    usable = seconds and threading.current_thread() is threading.main_thread()
    if not usable or not hasattr(signal, "setitimer") or signal.getitimer(signal.ITIMER_REAL)[0]:
        yield
        return

    def alarm(signum, frame):
        raise RewardTimeout(f"timeout after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Scores(list):
    """A reward function's scores, a plain list of floats to every caller, that can say per
    completion why one scored 0: ``reasons[i]`` and ``kinds[i]`` ('' | 'failed' |
    'violation' | 'timeout' | 'error'; the last three are counted in RewardStats)."""

    def __init__(self, values=(), reasons=None, kinds=None):
        super().__init__(float(v) for v in values)
        self.reasons = list(reasons) if reasons is not None else [""] * len(self)
        self.kinds = list(kinds) if kinds is not None else [""] * len(self)


@dataclasses.dataclass
class RewardStats:
    """What went wrong while scoring: counts since the last ``take()`` (the trainer logs them
    per step as reward/violations, reward/timeouts, reward/errors), the first
    ``max_samples`` reasons of the run (also printed), and ``reasons``: one string per
    completion of the last combine() ('' where no reward had anything to say; a failing
    test's reason is kept too, though not counted)."""

    violations: int = 0
    timeouts: int = 0
    errors: int = 0
    max_samples: int = 5
    samples: list[str] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)

    def add(self, name: str, kind: str, reason: str) -> None:
        if kind not in ("violation", "timeout", "error"):
            return
        attr = {"violation": "violations", "timeout": "timeouts", "error": "errors"}[kind]
        setattr(self, attr, getattr(self, attr) + 1)
        if len(self.samples) < self.max_samples:
            self.samples.append(f"reward {name}: {kind}: {reason}")
            last = len(self.samples) == self.max_samples
            more = " (further ones are only counted)" if last else ""
            print(f"strop: {self.samples[-1]}{more}", file=sys.stderr)

    def take(self) -> dict[str, float]:
        """The counts as step metrics, then zero them."""
        out = {
            "reward/violations": float(self.violations),
            "reward/timeouts": float(self.timeouts),
            "reward/errors": float(self.errors),
        }
        self.violations = self.timeouts = self.errors = 0
        return out


def _checked(name: str, scores, n: int) -> Scores:
    if len(scores) != n:
        raise StropError(f"reward {name}: returned {len(scores)} scores for {n} completions")
    return scores if isinstance(scores, Scores) else Scores(scores)


def _guarded(spec, prompts: list, completions: list[str], fields: dict) -> Scores:
    """One reward function's scores, each completion under a time budget: a completion whose
    call times out or raises scores 0 with the reason (StropError, a config mistake, still
    stops the run). Batched functions are called on the batch first, and one completion at a
    time only when that fails, to find the ones at fault."""
    fn, args, n = resolve(spec.name), dict(spec.args), len(completions)
    budget = args.pop("budget_s", None)
    if budget is None and spec.name not in _UNBUDGETED:  # code_tests' own timeout sits inside
        budget = max(BUDGET_S, float(args.get("timeout_s", 0)) + 5)
    if spec.name not in _PER_ITEM:
        try:
            with _budget(budget and budget * n):
                return _checked(spec.name, fn(prompts, completions, **{**fields, **args}), n)
        except StropError:
            raise
        except (Exception, RewardTimeout):  # noqa: BLE001 - retried one by one below
            pass
    rows = [_one(spec.name, fn, budget, prompts, completions, fields, args, i) for i in range(n)]
    return Scores(*zip(*rows, strict=True)) if rows else Scores()


def _one(name, fn, budget, prompts, completions, fields, args, i) -> tuple[float, str, str]:
    """(score, reason, kind) of completion ``i`` alone, under ``budget`` seconds."""
    n = len(completions)
    one = {k: v[i : i + 1] if isinstance(v, list) and len(v) == n else v for k, v in fields.items()}
    try:
        with _budget(budget):
            got = _checked(name, fn(prompts[i : i + 1], completions[i : i + 1], **one, **args), 1)
    except StropError:
        raise
    except RewardTimeout as e:
        return 0.0, str(e), "timeout"
    except Exception as e:  # noqa: BLE001 - a reward's bug must not end the run
        return 0.0, f"{type(e).__name__}: {e}"[:300], "error"
    return got[0], got.reasons[0], got.kinds[0]


def combine(
    specs: list,
    prompts: list,
    completions: list[str],
    fields: dict[str, list],
    stats: RewardStats | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted sum per completion, each function's raw scores by name). ``specs`` items
    have ``name``, ``weight`` and ``args``. ``stats`` (optional) counts violations, timeouts
    and errors and keeps each completion's reasons."""
    total = [0.0] * len(completions)
    each: dict[str, list[float]] = {}
    reasons = [""] * len(completions)
    for spec in specs:
        scores = _guarded(spec, prompts, completions, fields)
        key = spec.name.rpartition(":")[2]
        key = key if key not in each else f"{key}.{len(each)}"
        for i, (reason, kind) in enumerate(zip(scores.reasons, scores.kinds, strict=True)):
            if stats is not None:
                stats.add(key, kind, reason)
            if reason:
                reasons[i] = "; ".join(filter(None, [reasons[i], f"{key}: {reason}"]))
        each[key] = list(scores)
        total = [t + spec.weight * s for t, s in zip(total, scores, strict=True)]
    if stats is not None:
        stats.reasons = reasons
    return total, each
