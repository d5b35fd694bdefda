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
    """One training example. Exactly one layout:

    - chat: ``messages`` (a whole conversation);
    - text: ``text`` (a raw document, continued pre-training);
    - preference: ``messages`` is the prompt (the turns both answers share), ``chosen`` and
      ``rejected`` the two continuations (usually one assistant message each);
    - kto: ``messages`` is the prompt, ``completion`` the continuation and ``label`` whether it
      is desirable (True) or undesirable (False).

    ``origin`` is ``"file:line"`` so any later problem can point back at the source row.
    """

    origin: str
    messages: list[Message] | None = None
    text: str | None = None
    chosen: list[Message] | None = None
    rejected: list[Message] | None = None
    completion: list[Message] | None = None
    label: bool | None = None
    meta: dict = field(default_factory=dict)  # extra source fields, kept for later stages

    @property
    def is_chat(self) -> bool:
        return self.messages is not None and self.layout == "chat"

    @property
    def layout(self) -> str:
        if self.chosen is not None:
            return "preference"
        if self.completion is not None:
            return "kto"
        return "chat" if self.messages is not None else "text"


@dataclass
class BadRecord:
    """A row that could not become a Record: where it was and what was wrong."""

    origin: str  # "file:line"
    problem: str
    raw: str  # the row as read (truncated), written to the quarantine file
