"""Source formats (alpaca, sharegpt, messages, text): detection and conversion to ``Record``.

Each chat converter turns one row into a list of ``(location, Message)`` pairs, where location is
the field path users see in errors (``messages[2]``, ``output``, ``history[0][1]``). The shared
checks in ``to_record`` then apply the same rules to every format: known roles, a system message
only first, non-empty assistant content and, for chat stages, a user turn first (after any
system message) and at least one assistant turn.

A row that breaks a rule raises ``RowProblem`` with a message such as
``messages[2].role: unknown role 'bot' (allowed: system, user, assistant, tool)``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from strop.data.readers import type_name
from strop.data.records import ROLES, Message
from strop.errors import StropError


class RowProblem(ValueError):
    """One row is unusable; the message is the problem reported as ``file:line: problem``."""


Turns = list[tuple[str, Message]]

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "function_call": "assistant",  # kept as text so the call is still trained on
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
MESSAGE_ROLES = {**{r: r for r in ROLES}, "function": "tool"}  # "function": legacy OpenAI name


def _require(row: dict[str, Any], key: str, loc: str = "") -> Any:
    if key not in row or row[key] is None:
        where = f"{loc}: missing '{key}'" if loc else f"missing required field '{key}'"
        raise RowProblem(where)
    return row[key]


def _string(value: Any, loc: str) -> str:
    if not isinstance(value, str):
        raise RowProblem(f"{loc}: expected a string, got {type_name(value)}")
    return value


def _list(value: Any, loc: str) -> list[Any]:
    if not isinstance(value, list):
        raise RowProblem(f"{loc}: expected a list, got {type_name(value)}")
    if not value:
        raise RowProblem(f"{loc}: empty list")
    return value


def _object(value: Any, loc: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RowProblem(f"{loc}: expected an object, got {type_name(value)}")
    return value


def _optional_string(row: dict[str, Any], key: str) -> str | None:
    """An optional string field; absent, null and "" (an empty CSV cell) all mean "not given"."""
    value = row.get(key)
    if value is None or value == "":
        return None
    return _string(value, key)


def from_alpaca(row: dict[str, Any]) -> tuple[Turns, set[str]]:
    """instruction (+ "\\n\\n" + input) → user, output → assistant; optional system, history."""
    prompt = _string(_require(row, "instruction"), "instruction")
    extra = _optional_string(row, "input")
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra}" if prompt else extra
    output = _string(_require(row, "output"), "output")
    turns: Turns = []
    system = _optional_string(row, "system")
    if system is not None:
        turns.append(("system", Message("system", system)))
    history = row.get("history")
    if history is not None and history != []:
        for i, pair in enumerate(_list(history, "history")):
            if not isinstance(pair, list) or len(pair) != 2:
                raise RowProblem(
                    f"history[{i}]: expected a [user, assistant] pair, got {type_name(pair)}"
                    + (f" of length {len(pair)}" if isinstance(pair, list) else "")
                )
            turns.append(
                (f"history[{i}][0]", Message("user", _string(pair[0], f"history[{i}][0]")))
            )
            reply = _string(pair[1], f"history[{i}][1]")
            turns.append((f"history[{i}][1]", Message("assistant", reply)))
    turns.append(("instruction", Message("user", prompt)))
    turns.append(("output", Message("assistant", output)))
    return turns, {"instruction", "input", "output", "system", "history"}


def from_sharegpt(row: dict[str, Any]) -> tuple[Turns, set[str]]:
    """conversations: [{"from", "value"}, ...] with ShareGPT role names; optional system."""
    turns: Turns = []
    system = _optional_string(row, "system")
    if system is not None:
        turns.append(("system", Message("system", system)))
    allowed = ", ".join(SHAREGPT_ROLES)
    for i, item in enumerate(_list(_require(row, "conversations"), "conversations")):
        loc = f"conversations[{i}]"
        turn = _object(item, loc)
        # Some exports use role/content inside "conversations"; read them the same way.
        role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
        source_role = _string(_require(turn, role_key, loc), f"{loc}.{role_key}")
        role = SHAREGPT_ROLES.get(source_role)
        if role is None:
            raise RowProblem(f"{loc}.{role_key}: unknown role '{source_role}' (allowed: {allowed})")
        content = _string(_require(turn, text_key, loc), f"{loc}.{text_key}")
        turns.append((loc, Message(role, content)))
    return turns, {"conversations", "system"}


def _message_content(msg: dict[str, Any], loc: str) -> str:
    """content as a string; OpenAI text parts are joined; tool_calls are appended as JSON."""
    content = msg.get("content")
    tool_calls = msg.get("tool_calls")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for j, part in enumerate(content):
            part = _object(part, f"{loc}.content[{j}]")
            if part.get("type") != "text":
                raise RowProblem(
                    f"{loc}.content[{j}]: only text parts are supported, got '{part.get('type')}'"
                )
            parts.append(_string(part.get("text"), f"{loc}.content[{j}].text"))
        content = "".join(parts)
    if content is None and not tool_calls:
        raise RowProblem(f"{loc}.content: null content without tool_calls")
    text = "" if content is None else _string(content, f"{loc}.content")
    if tool_calls:
        _list(tool_calls, f"{loc}.tool_calls")
        # Compact JSON keeps every call (name, arguments, id) in the trained text.
        calls = json.dumps(tool_calls, ensure_ascii=False, separators=(",", ":"))
        text = f"{text}\n{calls}" if text else calls
    return text


def from_messages(row: dict[str, Any]) -> tuple[Turns, set[str]]:
    """OpenAI style: messages: [{"role", "content", optional "tool_calls"}, ...]."""
    turns: Turns = []
    allowed = ", ".join(ROLES)
    for i, item in enumerate(_list(_require(row, "messages"), "messages")):
        loc = f"messages[{i}]"
        msg = _object(item, loc)
        source_role = _string(_require(msg, "role", loc), f"{loc}.role")
        role = MESSAGE_ROLES.get(source_role)
        if role is None:
            raise RowProblem(f"{loc}.role: unknown role '{source_role}' (allowed: {allowed})")
        turns.append((loc, Message(role, _message_content(msg, loc))))
    return turns, {"messages"}


CHAT_FORMATS: dict[str, Callable[[dict[str, Any]], tuple[Turns, set[str]]]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
}
FORMATS = (*CHAT_FORMATS, "text", "preference", "kto", "prompt")


def _check_turns(turns: Turns, kind: str) -> None:
    for n, (loc, msg) in enumerate(turns):
        if msg.role == "system" and n > 0:
            raise RowProblem(f"{loc}: a system message must come first")
        if msg.role == "assistant" and not msg.content.strip():
            raise RowProblem(f"{loc}: assistant content is empty or whitespace-only")
    if kind != "chat":
        return  # pre-training joins the words; no chat template renders the turns
    opening = next(((loc, msg) for loc, msg in turns if msg.role != "system"), None)
    if opening is not None and opening[1].role != "user":
        # An answer with no prompt before it: chat templates cannot render the empty prompt
        # its loss mask needs, and "reply to nothing" is not what the model should learn.
        loc, role = opening[0], opening[1].role
        raise RowProblem(
            f"{loc}: the conversation opens with {'an' if role == 'assistant' else 'a'} {role} "
            "turn; the first turn after any system message must be the user's"
        )
    if not any(msg.role == "assistant" for _, msg in turns):
        raise RowProblem("conversation has no assistant turn (nothing to train on)")


def _meta(row: dict[str, Any], consumed: Iterable[str]) -> dict[str, Any]:
    """Unknown top-level fields are kept for later stages rather than dropped."""
    return {k: v for k, v in row.items() if k not in set(consumed)}


def classify(row: dict[str, Any], text_field: str = "text") -> str | None:
    """The format one row looks like, or None. Preference/KTO data is named so it can be refused."""
    keys = row.keys()
    if "chosen" in keys and "rejected" in keys:
        return "preference"
    if "completion" in keys and "label" in keys:
        return "kto"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if text_field in keys:
        return "text"
    if "prompt" in keys:
        return "prompt"
    return None


# What each kind of stage reads; the formats' own words for the other layouts.
KIND_FORMATS = {
    "chat": ("messages", "sharegpt", "alpaca"),
    "text": ("messages", "sharegpt", "alpaca", "text"),
    "preference": ("preference",),
    "kto": ("kto",),
    "prompt": ("prompt",),
}
LAYOUT_NAMES = {
    "preference": "preference pairs (prompt/chosen/rejected)",
    "kto": "KTO rows (prompt/completion/label)",
    "prompt": "prompt rows (prompt + the fields rewards read)",
}

REFUSED = {
    "preference": "looks like preference data (chosen/rejected), which stage sft does not train "
    "on; use a preference stage (rm, dpo, orpo, simpo)",
    "kto": "looks like KTO data (completion/label), which stage sft does not train on; "
    "use stage kto",
    "prompt": "looks like prompt-only data (no answers to train on); use stage grpo or ppo",
}


def detect_format(
    rows: Iterable[dict[str, Any]], source: str, text_field: str = "text", kind: str = "chat"
) -> str:
    """The format most of the given (first, parsed) rows look like.

    A vote rather than the first row alone, so one malformed leading row does not decide the
    format of the whole file. Raises StropError for preference/KTO data or unrecognised keys.
    """
    votes: Counter[str] = Counter()
    keys: dict[str, None] = {}  # ordered set of the keys seen, for the error message
    for row in rows:
        keys.update(dict.fromkeys(map(str, row)))
        label = classify(row, text_field)
        if label is not None:
            votes[label] += 1
    if not votes:
        shown = ", ".join(f"'{k}'" for k in list(keys)[:12]) or "none"
        raise StropError(
            f"{source}: cannot detect the data format from the keys {shown}; supported: "
            f"messages ('messages'), sharegpt ('conversations'), alpaca ('instruction' + "
            f"'output'), text ('{text_field}'); set data.format to choose one."
        )
    # most_common keeps first-seen order among ties, so the earliest format wins a tie
    fmt = votes.most_common(1)[0][0]
    if kind == "kto" and fmt == "messages" and "label" in keys:
        fmt = "kto"  # messages + label: the last assistant turn is the completion
    if kind in LAYOUT_NAMES:
        if fmt != kind:
            raise StropError(
                f"{source}: looks like {fmt} data, but this stage trains on "
                f"{LAYOUT_NAMES[kind]}; see docs/alignment.md for the accepted layouts."
            )
        return fmt
    if fmt in REFUSED:
        raise StropError(f"{source}: {REFUSED[fmt]}.")
    return fmt
