"""Preference pairs and KTO rows: conversion of one parsed row to a ``Record``.

Preference rows (stages rm, dpo, simpo, orpo) take the prompt from ``prompt`` (a string or a
list of messages), ``messages``, ``conversations`` (ShareGPT) or ``instruction`` (+ ``input``,
alpaca), with an optional ``system``. ``chosen`` and ``rejected`` are a string (one assistant
answer), one message object, or a list of messages. Without any prompt field the prompt is
*implicit*: chosen and rejected are whole conversations and their longest shared prefix of
messages is the prompt (the layout of datasets exported as two full chats). An optional
numeric ``margin`` (how much better chosen is) is kept for reward modelling.

KTO rows (stage kto) have the same prompt fields, a ``completion`` (string, message or list)
and a boolean ``label`` (desirable or not); or ``messages`` whose last assistant message is the
completion, plus ``label``.
"""

from __future__ import annotations

from typing import Any

from strop.data.formats import (
    MESSAGE_ROLES,
    SHAREGPT_ROLES,
    RowProblem,
    _list,
    _message_content,
    _object,
    _optional_string,
    _string,
)
from strop.data.readers import type_name
from strop.data.records import Message, Record

PROMPT_FIELDS = ("prompt", "messages", "conversations", "instruction")
ROLE_NAMES = {**SHAREGPT_ROLES, **MESSAGE_ROLES}


def _message(item: Any, loc: str) -> Message:
    msg = _object(item, loc)
    role_key, text_key = ("from", "value") if "from" in msg else ("role", "content")
    if role_key not in msg:
        raise RowProblem(f"{loc}: missing 'role'")
    source = _string(msg[role_key], f"{loc}.{role_key}")
    role = ROLE_NAMES.get(source)
    if role is None:
        raise RowProblem(f"{loc}.{role_key}: unknown role '{source}'")
    if text_key == "value":
        return Message(role, _string(msg.get("value"), f"{loc}.value"))
    return Message(role, _message_content(msg, loc))


def turns_of(value: Any, loc: str, default_role: str) -> list[Message]:
    """A string (one message of ``default_role``), one message object, or a list of them."""
    if isinstance(value, str):
        return [Message(default_role, value)]
    if isinstance(value, dict):
        return [_message(value, loc)]
    if isinstance(value, list):
        return [_message(m, f"{loc}[{i}]") for i, m in enumerate(_list(value, loc))]
    raise RowProblem(
        f"{loc}: expected a string, a message or a list of messages, got {type_name(value)}"
    )


def _explicit_prompt(row: dict[str, Any]) -> list[Message] | None:
    """The prompt turns from whichever prompt field the row has, or None for an implicit one."""
    turns: list[Message] = []
    system = _optional_string(row, "system")
    if system is not None:
        turns.append(Message("system", system))
    if row.get("prompt") not in (None, ""):
        return turns + turns_of(row["prompt"], "prompt", "user")
    if row.get("messages") is not None:
        return turns + turns_of(row["messages"], "messages", "user")
    if row.get("conversations") is not None:
        return turns + turns_of(row["conversations"], "conversations", "user")
    if row.get("instruction") is not None:
        text = _string(row["instruction"], "instruction")
        extra = _optional_string(row, "input")
        if extra and extra.strip():
            text = f"{text}\n\n{extra}" if text else extra
        return turns + [Message("user", text)]
    return turns or None


def _check_prompt(prompt: list[Message], loc: str) -> None:
    if not prompt or all(m.role == "system" for m in prompt):
        raise RowProblem(f"{loc}: the prompt has no user turn")
    for i, m in enumerate(prompt):
        if m.role == "system" and i > 0:
            raise RowProblem(f"{loc}[{i}]: a system message must come first")
    if prompt[-1].role == "assistant":
        raise RowProblem(
            f"{loc}: the prompt ends with an assistant turn, so there is no answer "
            "to prefer; the last prompt turn must be user or tool"
        )


def _check_response(turns: list[Message], loc: str) -> None:
    if not any(m.role == "assistant" for m in turns):
        raise RowProblem(f"{loc}: no assistant turn (nothing to score)")
    for i, m in enumerate(turns):
        if m.role == "system":
            raise RowProblem(f"{loc}[{i}]: a system message inside a response")
        if m.role == "assistant" and not m.content.strip():
            raise RowProblem(f"{loc}: assistant content is empty or whitespace-only")


def _split_shared(chosen: list[Message], rejected: list[Message]) -> tuple[list, list, list]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # The shared prefix must stop before the first answer: back off to a non-assistant end.
    while n > 0 and chosen[n - 1].role == "assistant":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _margin(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("margin") in (None, ""):
        return {}
    value = row["margin"]
    try:
        margin = float(value)
    except (TypeError, ValueError):
        raise RowProblem(f"margin: expected a number, got {type_name(value)}") from None
    return {"margin": margin}


def from_preference(row: dict[str, Any], origin: str) -> Record:
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise RowProblem(f"missing required field '{key}'")
    prompt = _explicit_prompt(row)
    chosen = turns_of(row["chosen"], "chosen", "assistant")
    rejected = turns_of(row["rejected"], "rejected", "assistant")
    if prompt is None or (len(prompt) == 1 and prompt[0].role == "system"):
        system = prompt or []
        shared, chosen, rejected = _split_shared(chosen, rejected)
        prompt = system + shared
        if not shared:
            raise RowProblem(
                "chosen/rejected: no prompt field and no shared opening turns, so "
                f"the prompt is unknown (give one of {', '.join(PROMPT_FIELDS)})"
            )
    _check_prompt(prompt, "prompt")
    _check_response(chosen, "chosen")
    _check_response(rejected, "rejected")
    if chosen == rejected:
        raise RowProblem("chosen and rejected are identical (nothing to prefer)")
    consumed = {*PROMPT_FIELDS, "input", "system", "chosen", "rejected", "margin"}
    meta = {k: v for k, v in row.items() if k not in consumed} | _margin(row)
    return Record(origin, messages=prompt, chosen=chosen, rejected=rejected, meta=meta)


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise RowProblem(f"label: expected true/false, got {value!r}")


def from_kto(row: dict[str, Any], origin: str) -> Record:
    if row.get("label") is None or row.get("label") == "":
        raise RowProblem("missing required field 'label'")
    label = _label(row["label"])
    if row.get("completion") is not None:
        prompt = _explicit_prompt(row)
        if prompt is None:
            raise RowProblem(f"missing a prompt (one of {', '.join(PROMPT_FIELDS)})")
        completion = turns_of(row["completion"], "completion", "assistant")
    else:
        turns = turns_of(row.get("messages"), "messages", "user") if "messages" in row else []
        last = max((i for i, m in enumerate(turns) if m.role == "assistant"), default=None)
        if last is None:
            raise RowProblem("missing 'completion' (or 'messages' ending in an assistant turn)")
        prompt, completion = turns[:last], turns[last:]
    _check_prompt(prompt, "prompt")
    _check_response(completion, "completion")
    consumed = {*PROMPT_FIELDS, "input", "system", "completion", "label"}
    meta = {k: v for k, v in row.items() if k not in consumed}
    return Record(origin, messages=prompt, completion=completion, label=label, meta=meta)


def from_prompt(row: dict[str, Any], origin: str) -> Record:
    prompt = _explicit_prompt(row)
    if prompt is None:
        raise RowProblem(f"missing a prompt (one of {', '.join(PROMPT_FIELDS)})")
    _check_prompt(prompt, "prompt")
    consumed = {*PROMPT_FIELDS, "input", "system"}
    return Record(origin, messages=prompt, meta={k: v for k, v in row.items() if k not in consumed})


# Row layouts of the stages that do not train on chats: one Record builder per data kind.
ROW_FORMATS = {"preference": from_preference, "kto": from_kto, "prompt": from_prompt}
