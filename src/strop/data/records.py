"""The one canonical record type every reader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    role: str  # one of ROLES
    content: str


@dataclass
class Record:
    """A chat conversation (``messages``) or a raw-text document (``text``), never both.

    ``origin`` is ``"file:line"`` so any later problem can point back at the source row.
    """

    origin: str
    messages: list[Message] | None = None
    text: str | None = None
    meta: dict = field(default_factory=dict)  # extra source fields, kept for later stages

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass
class BadRecord:
    """A row that could not become a Record: where it was and what was wrong."""

    origin: str  # "file:line"
    problem: str
    raw: str  # the row as read (truncated), written to the quarantine file
