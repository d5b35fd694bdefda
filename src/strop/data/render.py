"""Chat rendering and loss masks, derived from the tokenizer's own chat template.

No per-template table: for every assistant turn we render the conversation up to that turn with
the generation prompt (where the answer starts) and through that turn (where it ends), and the
characters in between are the target. The end-of-turn token belongs to the target, so the model
learns to stop; whitespace the template prints after it (ChatML's newline) does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2.exceptions import TemplateError

from strop.data.records import Record
from strop.errors import StropError
from strop.models.logps import IGNORE  # noqa: F401  (the label of a position without loss)

# Used only for tokenizers that ship no chat template: ChatML-style turns closed by EOS.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class Sample:
    """One tokenised training example: ids, labels (IGNORE where no loss), where it came from."""

    input_ids: list[int]
    labels: list[int]
    origin: str

    @property
    def n_targets(self) -> int:
        return sum(1 for y in self.labels if y != IGNORE)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE


class TemplateProblem(StropError):
    """The chat template cannot render one record. strop.data.dataset turns it into a bad row
    (quarantined and counted like any other); elsewhere it is one sentence naming the record."""

    def __init__(self, origin: str, problem: str):
        super().__init__(f"{origin}: {problem}")
        self.origin, self.problem = origin, problem


# What apply_chat_template raises for a conversation it cannot render: the template's own
# raise_exception (TemplateError), an empty conversation (ValueError), a field it indexes
# that is not there (UndefinedError is a TemplateError; KeyError, TypeError, IndexError).
RENDER_ERRORS = (TemplateError, ValueError, TypeError, KeyError, IndexError)


def _render(tokenizer, messages: list[dict], gen_prompt: bool, origin: str = "<record>") -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=gen_prompt
        )
    except RENDER_ERRORS as e:
        roles = ", ".join(m["role"] for m in messages) or "none"
        raise TemplateProblem(
            origin,
            f"the model's chat template cannot render this conversation (roles: {roles}): "
            f"{str(e).strip() or type(e).__name__}",
        ) from None


def target_spans(
    tokenizer, record: Record, mask: str, first_turn: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``record`` and return (text, [(start, end) char spans that carry loss]).

    Only assistant turns from message index ``first_turn`` on can carry loss (a preference
    pair's responses follow a prompt that may itself hold earlier assistant turns)."""
    messages = [{"role": m.role, "content": m.content} for m in record.messages]
    full = _render(tokenizer, messages, gen_prompt=False, origin=record.origin)
    if mask == "all":
        return full, [(0, len(full))]
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < first_turn:
            continue
        if i == 0:  # validated data never gets here (strop.data.formats); records made in code may
            raise TemplateProblem(
                record.origin,
                "messages[0]: the conversation opens with an assistant turn, so there is no "
                "prompt to render before it; the first turn must be the user's",
            )
        before = _render(tokenizer, messages[:i], gen_prompt=True, origin=record.origin)
        through = _render(tokenizer, messages[: i + 1], gen_prompt=False, origin=record.origin)
        if not (full.startswith(before) and full.startswith(through)):
            raise StropError(
                f"{record.origin}: the chat template renders earlier turns differently once later "
                "turns follow, so loss masks cannot be derived by prefix; use data.mask=last "
                "or a template that renders history stably"
            )
        spans.append((len(before), len(through.rstrip())))
    if mask == "last":
        spans = spans[-1:]
    return full, spans


def tokenize_chat(tokenizer, record: Record, mask: str, first_turn: int = 0) -> Sample:
    text, spans = target_spans(tokenizer, record, mask, first_turn)
    # Prompt and target pieces are tokenised separately, as at inference (the prompt is encoded
    # alone, then the model generates): no token straddles a boundary. Tokenising the whole text
    # lets BPE merge the header's "\n" with an answer's leading whitespace (SmolLM2), so that
    # whitespace would never be trained. The template already holds any BOS: add none.
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for start, end in [*spans, (len(text), len(text))]:
        for piece, trained in ((text[pos:start], False), (text[start:end], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if trained else [IGNORE] * len(piece_ids)
        pos = end
    return Sample(ids, labels, record.origin)


def tokenize_text(tokenizer, record: Record, max_length: int) -> list[Sample]:
    """Raw text for continued pre-training: BOS as the tokenizer adds it, EOS appended, and
    documents longer than max_length split into consecutive pieces (no token is lost)."""
    ids = tokenizer(record.text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    pieces = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    return [Sample(p, list(p), f"{record.origin}#{k}") for k, p in enumerate(pieces) if len(p) > 1]


@dataclass
class TokenizeStats:
    samples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    target_tokens: int = 0
    tokens: int = 0

    def describe(self) -> str:
        return (
            f"{self.samples} samples, {self.tokens} tokens ({self.target_tokens} trained); "
            f"truncated {self.truncated}, dropped: {self.dropped_no_target} with no target "
            f"left, {self.dropped_too_long} too long"
        )


def tokenize_records(
    tokenizer, records: list[Record], *, mask: str, max_length: int, truncation: str
) -> tuple[list[Sample], TokenizeStats, list[tuple[str, str]]]:
    """Tokenise every record. Returns samples, stats and (origin, reason) for each dropped one."""
    ensure_chat_template(tokenizer)
    out: list[Sample] = []
    stats = TokenizeStats()
    dropped: list[tuple[str, str]] = []
    for rec in records:
        if not rec.is_chat:
            out.extend(tokenize_text(tokenizer, rec, max_length))
            continue
        s = tokenize_chat(tokenizer, rec, mask)
        if len(s.input_ids) > max_length:
            if truncation == "drop":
                stats.dropped_too_long += 1
                dropped.append((rec.origin, f"{len(s.input_ids)} tokens > max_length"))
                continue
            s = Sample(s.input_ids[:max_length], s.labels[:max_length], s.origin)
            stats.truncated += 1
        # labels[0] never trains (nothing predicts the first token), so count from 1.
        if not any(y != IGNORE for y in s.labels[1:]):
            stats.dropped_no_target += 1
            dropped.append((rec.origin, "no target token left after truncation"))
            continue
        out.append(s)
    stats.samples = len(out)
    stats.tokens = sum(len(s.input_ids) for s in out)
    stats.target_tokens = sum(sum(1 for y in s.labels[1:] if y != IGNORE) for s in out)
    return out, stats, dropped
