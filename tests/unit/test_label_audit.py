"""Label audit (DESIGN.md §3.5) on random conversations, for three real chat templates.

Every assistant turn and its end-of-turn token carry loss; system/user turns, role headers,
the generation prompt and the whitespace a template prints after end-of-turn never do; a sample
whose target is truncated away is dropped and counted, never kept with an empty loss.
Expected answers are computed independently of render.py: the answer as the template prints it
(the Llama-style template trims) followed by the end-of-turn token, compared with the decoded
target tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from strop.data.records import Message, Record
from strop.data.render import IGNORE, Sample, tokenize_chat, tokenize_records
from strop.models.load import load_tokenizer

N_CONVERSATIONS = 50

# Content pieces: unicode (multi-byte, emoji), whitespace, digits, punctuation, and strings that
# look like role names or headers of other templates (never the tokenizer's own special tokens).
PIECES = [
    "hello",
    "world",
    "Sure",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "héllo",
    "日本語",
    "🙂",
    "Ω≈ç√",
    "12345",
    "3.14",
    "0",
    "assistant",
    "user",
    "system",
    "Assistant:",
    "User:",
    "### Response:",
    "<|assistant|>",
    "<|user|>",
    "\nassistant\n",
    "[INST]",
    "im_start",
    ",",
    ".",
    "!",
    "'s",
    "-",
]


@dataclass
class Template:
    fixture: str
    trims: bool  # the template prints content | trim
    trailing: str  # what the template prints after the end-of-turn token


TEMPLATES = {
    "tiny-llama": Template("tiny_llama_dir", trims=True, trailing=""),
    "tiny-qwen2": Template("tiny_qwen2_dir", trims=False, trailing="\n"),
    "smollm2": Template("smollm2_dir", trims=False, trailing="\n"),
}
PARAMS = [
    pytest.param(name, marks=[pytest.mark.slow] if name == "smollm2" else [], id=name)
    for name in TEMPLATES
]


@pytest.fixture(scope="module", params=PARAMS)
def case(request):
    spec = TEMPLATES[request.param]
    tok = load_tokenizer(request.getfixturevalue(spec.fixture))
    return request.param, spec, tok


def random_content(rng: random.Random, *, nonblank: bool = False) -> str:
    while True:
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.3:
            text = rng.choice([" ", "  ", "\n", " \n"]) + text
        if rng.random() < 0.3:
            text += rng.choice([" ", "\n", "  \n"])
        if not nonblank or text.strip():  # the validator refuses blank answers
            return text


def random_record(rng: random.Random, i: int) -> Record:
    msgs = []
    if rng.random() < 0.5:
        msgs.append(Message("system", random_content(rng)))
    for _ in range(rng.randint(1, 4)):
        msgs.append(Message("user", random_content(rng)))
        msgs.append(Message("assistant", random_content(rng, nonblank=True)))
    return Record(f"random.jsonl:{i + 1}", messages=msgs)


def records(seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    return [random_record(rng, i) for i in range(N_CONVERSATIONS)]


def render(tok, messages: list[Message], gen_prompt: bool = False) -> str:
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    return tok.apply_chat_template(dicts, tokenize=False, add_generation_prompt=gen_prompt)


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def printed(spec: Template, content: str) -> str:
    return content.strip() if spec.trims else content


def answer_starts_blank(rec: Record) -> bool:
    """Only then can a BPE merge cross a prompt/answer boundary (e.g. SmolLM2's "\\n" + " ")."""
    return any(m.content[:1].isspace() for m in rec.messages if m.role == "assistant")


def target_runs(sample: Sample) -> list[tuple[int, int]]:
    """Maximal [start, end) token ranges whose labels carry loss."""
    runs, start = [], None
    for t, y in enumerate([*sample.labels, IGNORE]):
        if y != IGNORE and start is None:
            start = t
        elif y == IGNORE and start is not None:
            runs.append((start, t))
            start = None
    return runs


def test_assistant_mask_trains_each_answer_and_its_end_of_turn_only(case):
    _, spec, tok = case
    eot, eot_id = tok.eos_token, tok.eos_token_id
    for rec in records():
        s = tokenize_chat(tok, rec, "assistant")
        turns = [i for i, m in enumerate(rec.messages) if m.role == "assistant"]
        runs = target_runs(s)
        assert len(runs) == len(turns), rec.origin  # every assistant turn is present
        # a target token is its own label; everything else is IGNORE
        assert all(y in (IGNORE, x) for x, y in zip(s.input_ids, s.labels, strict=True))
        prev_end, prev_turn = 0, -1
        for (a, b), i in zip(runs, turns, strict=True):
            answer = printed(spec, rec.messages[i].content)
            assert decode(tok, s.input_ids[a:b]) == answer + eot, (rec.origin, i)
            assert s.input_ids[b - 1] == eot_id
            # the masked stretch before this answer holds the earlier turns' contents and
            # ends with the generation prompt (role header): none of it carries loss
            masked = decode(tok, s.input_ids[prev_end:a])
            gen_prompt = render(tok, rec.messages[:i], gen_prompt=True)
            gen_prompt = gen_prompt[len(render(tok, rec.messages[:i])) :]
            assert gen_prompt and masked.endswith(gen_prompt), (rec.origin, i)
            for m in rec.messages[prev_turn + 1 : i]:
                assert printed(spec, m.content) in masked, (rec.origin, m.role)
            prev_end, prev_turn = b, i
        # what the template prints after the last end-of-turn (ChatML's "\n") is not trained
        assert decode(tok, s.input_ids[prev_end:]) == spec.trailing
        assert all(y == IGNORE for y in s.labels[prev_end:])


def test_chatml_newline_after_every_end_of_turn_is_masked(case):
    name, spec, tok = case
    if spec.trailing != "\n":
        pytest.skip(f"{name}: the template prints nothing after its end-of-turn token")
    for rec in records():
        s = tokenize_chat(tok, rec, "assistant")
        for _, b in target_runs(s):
            assert b < len(s.input_ids)
            assert decode(tok, s.input_ids[b : b + 1]).startswith("\n")
            assert s.labels[b] == IGNORE


def test_last_mask_trains_only_the_last_answer(case):
    _, spec, tok = case
    for rec in records():
        s = tokenize_chat(tok, rec, "last")
        runs = target_runs(s)
        assert len(runs) == 1, rec.origin
        (a, b) = runs[0]
        assert decode(tok, s.input_ids[a:b]) == printed(spec, rec.messages[-1].content) + (
            tok.eos_token
        )
        assert decode(tok, s.input_ids[b:]) == spec.trailing
        # the same text; the same ids as mask=assistant unless an earlier answer starts with
        # whitespace (mask=last tokenises the history whole, as inference does)
        full = tokenize_chat(tok, rec, "assistant")
        assert decode(tok, s.input_ids) == decode(tok, full.input_ids)
        if not answer_starts_blank(rec):
            assert s.input_ids == full.input_ids
            assert s.labels[a:b] == full.labels[a:b]


def test_all_mask_trains_every_token(case):
    _, _, tok = case
    for rec in records():
        s = tokenize_chat(tok, rec, "all")
        assert s.labels == s.input_ids
        assert s.input_ids == tok(render(tok, rec.messages), add_special_tokens=False)["input_ids"]


def test_sample_is_the_rendered_text_and_nothing_more(case):
    """No hidden special tokens: the ids decode to exactly the template's text; and wherever no
    answer starts with whitespace (so no BPE merge across a prompt/answer boundary is possible)
    the ids are exactly what the tokenizer gives for the whole text."""
    _, _, tok = case
    for rec in records():
        text = render(tok, rec.messages)
        s = tokenize_chat(tok, rec, "assistant")
        assert decode(tok, s.input_ids) == text, rec.origin
        if not answer_starts_blank(rec):
            assert s.input_ids == tok(text, add_special_tokens=False)["input_ids"], rec.origin


def test_begin_of_sequence_token_is_never_doubled(case):
    name, _, tok = case
    for rec in records():
        ids = tokenize_chat(tok, rec, "assistant").input_ids
        first = ids[0]
        if name == "tiny-llama":
            assert first == tok.bos_token_id
            assert ids.count(tok.bos_token_id) == 1
        else:  # ChatML: starts with one <|im_start|> (SmolLM2's bos_token), never two
            assert first == tok.convert_tokens_to_ids("<|im_start|>")
            assert ids[1] != first
            n_turns = len(rec.messages) + (rec.messages[0].role != "system")  # default system
            assert ids.count(first) == n_turns


def two_turns(long_answer: str = "the answer is forty-two, give or take") -> Record:
    return Record(
        "t.jsonl:1",
        messages=[
            Message("user", "what is six times seven?"),
            Message("assistant", long_answer),
            Message("user", "and once more?"),
            Message("assistant", "forty-two again"),
        ],
    )


def tokenize_one(tok, rec: Record, max_length: int, mask: str = "assistant", truncation="right"):
    return tokenize_records(tok, [rec], mask=mask, max_length=max_length, truncation=truncation)


def test_truncation_that_removes_the_whole_target_drops_and_counts(case):
    _, _, tok = case
    rec = two_turns()
    full = tokenize_chat(tok, rec, "assistant")
    first = target_runs(full)[0][0]
    samples, stats, dropped = tokenize_one(tok, rec, max_length=first)
    assert samples == []
    assert (stats.samples, stats.dropped_no_target, stats.truncated) == (0, 1, 1)
    assert dropped == [("t.jsonl:1", "no target token left after truncation")]
    assert stats.target_tokens == 0 and stats.tokens == 0
    # one target token left: kept, and it is the answer's first token
    samples, stats, _ = tokenize_one(tok, rec, max_length=first + 1)
    assert stats.dropped_no_target == 0 and len(samples) == 1
    assert samples[0].n_targets == 1 == stats.target_tokens
    # mask=last: cut before the last answer drops the sample even though an earlier answer is left
    last = tokenize_chat(tok, rec, "last")
    last_start = target_runs(last)[0][0]
    samples, stats, dropped = tokenize_one(tok, rec, max_length=last_start, mask="last")
    assert samples == [] and stats.dropped_no_target == 1 and len(dropped) == 1
    # truncation=drop: counted as too long, not as "no target"
    samples, stats, dropped = tokenize_one(tok, rec, max_length=first + 1, truncation="drop")
    assert samples == [] and (stats.dropped_too_long, stats.dropped_no_target) == (1, 0)
    assert "max_length" in dropped[0][1]


def test_truncation_mid_answer_keeps_the_prompt_masked(case):
    _, _, tok = case
    rec = two_turns()
    full = tokenize_chat(tok, rec, "assistant")
    a, b = target_runs(full)[0]
    cut = (a + b) // 2
    assert a < cut < b
    samples, stats, dropped = tokenize_one(tok, rec, max_length=cut)
    assert dropped == [] and stats.truncated == 1 and len(samples) == 1
    s = samples[0]
    assert s.input_ids == full.input_ids[:cut] and s.labels == full.labels[:cut]
    assert all(y == IGNORE for y in s.labels[:a])
    assert all(y != IGNORE for y in s.labels[a:])
    assert stats.target_tokens == cut - a


def test_random_truncation_never_keeps_a_sample_without_target(case):
    _, _, tok = case
    rng = random.Random(1)
    recs = records(seed=1)
    full = [tokenize_chat(tok, r, "assistant") for r in recs]
    max_length = rng.randint(2, max(len(s.input_ids) for s in full))
    samples, stats, dropped = tokenize_records(
        tok, recs, mask="assistant", max_length=max_length, truncation="right"
    )
    assert stats.samples + stats.dropped_no_target == len(recs) == len(samples) + len(dropped)
    assert stats.truncated == sum(len(s.input_ids) > max_length for s in full)
    kept = {s.origin for s in samples}
    for rec, f in zip(recs, full, strict=True):
        cut_labels = f.labels[:max_length]
        has_target = any(y != IGNORE for y in cut_labels[1:])
        assert (rec.origin in kept) == has_target, rec.origin
    for s in samples:
        assert len(s.input_ids) <= max_length and s.n_targets > 0
    assert stats.target_tokens == sum(sum(y != IGNORE for y in s.labels[1:]) for s in samples)
