"""dedup_exact: remove records whose normalised content equals an earlier record's.

The key is a 64-bit BLAKE2b digest of the content after lower-casing, collapsing whitespace
and (optionally) dropping punctuation, with each turn's role and part kept in the key so that a
question asked by the user differs from the same words said by the assistant. At 64 bits the
chance of any false collision among 10^8 records is below 1e-3; the index holds one integer
per kept record, the only state that grows with the input.

``prompt: collapse`` also removes records whose prompt (the turns before the last answer)
equals an earlier record's prompt, keeping the first answer to each question; ``keep`` (the
default) keeps every answer that differs.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from strop.config.schema import Section
from strop.data.prepare.base import Decision, Keyed, Removed, Result, Step, prompt_texts, turns
from strop.data.records import Record

PUNCT_RE = re.compile(r"[^\w\s]|_")
SEP = "\x1f"  # between turns: cannot occur in normalised text, so turns never run together


class ExactDedupParams(Section):
    prompt: Literal["keep", "collapse"] = "keep"
    """Same prompt, different answer: keep both, or keep only the first."""
    lowercase: bool = True
    ignore_punctuation: bool = False
    ignore_whitespace: bool = True
    """Compare text with runs of whitespace collapsed to one space (and trimmed)."""


def digest(parts: list[str]) -> int:
    h = hashlib.blake2b(SEP.join(parts).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(h.digest(), "little")


class ExactDedup(Step):
    name = "dedup_exact"
    Params = ExactDedupParams
    stateful = True

    def __init__(self, params: ExactDedupParams) -> None:
        super().__init__(params)
        self.seen: dict[int, str] = {}  # key -> origin of the record kept
        self.seen_prompts: dict[int, str] = {}

    def _norm(self, text: str) -> str:
        p = self.params
        if p.lowercase:
            text = text.lower()
        if p.ignore_punctuation:
            text = PUNCT_RE.sub(" ", text)
        if p.ignore_whitespace:
            # re.sub(r"\s+", " ", text).strip(), faster: split() and \s agree on whitespace
            text = " ".join(text.split())
        return text

    def key(self, rec: Record) -> tuple[int, int | None]:
        if rec.text is not None:
            whole = digest(["text", self._norm(rec.text)])
            return whole, (whole if self.params.prompt == "collapse" else None)
        parts = [f"{part}:{m.role}:{self._norm(m.content)}" for part, m in turns(rec)]
        if rec.label is not None:
            parts.append(f"label:{rec.label}")
        prompt = None
        if self.params.prompt == "collapse":
            prompt = digest(["prompt", *(self._norm(t) for t in prompt_texts(rec))])
        return digest(parts), prompt

    def apply(self, records: list[Record]) -> list[Result]:
        return [Keyed(self.key(r)) for r in records]

    def decide(self, key: Any, origin: str, info: dict[str, Any]) -> Decision:
        whole, prompt = key
        first = self.seen.get(whole)
        if first is not None:
            return Decision(Removed("duplicate", f"same content as {first}"), duplicate_of=first)
        if prompt is not None:
            first = self.seen_prompts.get(prompt)
            if first is not None:
                return Decision(
                    Removed("duplicate_prompt", f"same prompt as {first}"), duplicate_of=first
                )
            self.seen_prompts[prompt] = origin
        self.seen[whole] = origin
        return Decision()
