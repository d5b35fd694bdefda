"""Prompt rows for the online RL stages (grpo, ppo): a prompt and the fields its rewards need.

A row gives the prompt as ``prompt`` (a string or a list of messages; or ``messages``,
``conversations``, ``instruction`` + ``input`` as in preference data) with an optional
``system``; every other field (``answer``, ``tests``, ...) is kept and handed to the reward
functions. The prompt is rendered with the tokenizer's chat template, ending with the
assistant header, exactly as generation sees it; no token is a target (the completions,
sampled during training, carry the loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from strop.data.batching import Row
from strop.data.records import Record
from strop.data.render import IGNORE, ensure_chat_template


@dataclass
class PromptRow(Row):
    messages: list[dict] = field(default_factory=list)  # the prompt, as chat messages
    fields: dict[str, Any] = field(default_factory=dict)  # everything else in the data row


@dataclass
class PromptStats:
    rows: int = 0
    tokens: int = 0
    dropped_too_long: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.rows} prompts, {self.tokens} tokens; dropped {self.dropped_too_long} too long"
        )


def prompt_rows(
    tokenizer, records: list[Record], max_length: int, truncation: str = "right"
) -> tuple[list[PromptRow], PromptStats]:
    """One row per prompt; prompts longer than ``max_length`` tokens are dropped and counted
    (cutting a prompt would change the question)."""
    ensure_chat_template(tokenizer)
    rows, stats = [], PromptStats()
    for rec in records:
        messages = [{"role": m.role, "content": m.content} for m in rec.messages]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_length:
            stats.dropped_too_long += 1
            stats.dropped.append((rec.origin, f"prompt of {len(ids)} tokens > max_length"))
            continue
        rows.append(PromptRow(ids, [IGNORE] * len(ids), [len(ids)], {}, messages, dict(rec.meta)))
    stats.rows, stats.tokens = len(rows), sum(len(r.input_ids) for r in rows)
    return rows, stats
