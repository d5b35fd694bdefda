"""A byte-level BPE tokenizer (tokenizer.json + the HF tokenizer) as GGUF's tokenizer keys.

llama.cpp rebuilds the tokenizer from these keys alone: tokens by id and their types, merges,
the pre-tokenizer by *name* (it knows a fixed set of splitting rules, not regexes), the special
ids, add_bos/add_eos and the chat template. The end-of-generation ids are the ones training
used: the token the chat template closes an assistant turn with, found by strop's own chat
tokenisation, so the exported model stops where the trained model stops.
"""

from __future__ import annotations

import json
from pathlib import Path

from gguf import TokenType

from strop.errors import StropError

# The split regexes of Llama-3's and Qwen2's tokenizer.json, which llama.cpp knows by name.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# tokenizer.json pre_tokenizer structure -> llama.cpp's name for the same splitting
# (tokenizer.ggml.pre; llama.cpp refuses a name it does not know).
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    ("ByteLevel+regex",): "gpt-2",  # the GPT-2 regex alone
    # digits one by one, then GPT-2's regex: llama.cpp splits "smollm", "starcoder" and
    # "refact" identically; SmolLM2's own GGUF says smollm
    ("Digits(individual)", "ByteLevel+regex"): "smollm",
    (f"Split({_LLAMA3_SPLIT!r})", "ByteLevel"): "llama-bpe",
    (f"Split({_QWEN2_SPLIT!r})", "ByteLevel"): "qwen2",
}
# Byte-level with no splitting at all has no llama.cpp name. Without merges every byte stays a
# token of its own whatever the split, so llama.cpp's "default" tokenises it identically (the
# tiny models' tokenizer); with merges it would not, and the export refuses.
NO_SPLIT_NO_MERGES = "default"


def tokenizer_meta(model_dir: Path, vocab_size: int) -> dict:
    """The tokenizer as GGUF keys: tokens by id (padded to the embedding's rows), their types,
    merges, pre-tokenizer name, special ids, add_bos/add_eos and the chat template."""
    from transformers import AutoTokenizer

    from strop.quiet import quiet_transformers

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise StropError(f"{model_dir}: no tokenizer.json; GGUF export needs a fast tokenizer")
    spec = json.loads(path.read_text())
    model = spec.get("model") or {}
    pre = _pre_signature(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not any(s.startswith("ByteLevel") for s in pre):
        raise StropError(
            f"{path}: a {model.get('type')} tokenizer with pre-tokenizer {list(pre)} is not "
            "byte-level BPE; GGUF export writes byte-level BPE ('gpt2') tokenizers only for now"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    tokens, types = _tokens(spec, vocab_size, path)
    pre_name = PRE_TOKENIZERS.get(pre) or (NO_SPLIT_NO_MERGES if pre == ("ByteLevel",) else None)
    if pre_name is None or (pre_name == NO_SPLIT_NO_MERGES and merges):
        raise StropError(
            f"{path}: pre_tokenizer {list(pre)} has no llama.cpp name strop knows; known: "
            f"{', '.join(f'{list(k)} ({v})' for k, v in PRE_TOKENIZERS.items())}"
        )
    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(model_dir)
    special = {i for i, t in enumerate(types) if t == TokenType.CONTROL}
    eot = _end_of_turn(tok, special)
    # What generation stops on: the template's end-of-turn first (the token training taught to
    # end every reply), then the tokenizer's and generation_config's eos ids.
    eos = eot if eot is not None else tok.eos_token_id
    eog = [i for i in (eos, tok.eos_token_id, *_generation_eos(model_dir)) if i is not None]
    probe = tok("a")["input_ids"]
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": pre_name,
        "bos": tok.bos_token_id,
        "eos": eos,
        "eot": eos,
        "pad": tok.pad_token_id,
        "unk": tok.unk_token_id,
        "eog": list(dict.fromkeys(eog)),
        "add_bos": tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id],
        "add_eos": tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id],
        "chat_template": _template(tok.chat_template),
    }


def _pre_signature(node: dict | None) -> tuple[str, ...]:
    """A pre_tokenizer as a flat tuple of steps, the key of PRE_TOKENIZERS."""
    if not node:
        return ()
    kind = node.get("type")
    if kind == "Sequence":
        return tuple(s for child in node.get("pretokenizers", []) for s in _pre_signature(child))
    if kind == "ByteLevel":
        prefix = "+prefix" if node.get("add_prefix_space") else ""
        return (f"ByteLevel{prefix}{'+regex' if node.get('use_regex', True) else ''}",)
    if kind == "Digits":
        return ("Digits(individual)" if node.get("individual_digits") else "Digits",)
    if kind == "Split" and node.get("behavior") == "Isolated" and not node.get("invert"):
        pattern = node.get("pattern") or {}
        return (f"Split({pattern.get('Regex', pattern.get('String'))!r})",)
    return (json.dumps(node, sort_keys=True),)


def _tokens(spec: dict, vocab_size: int, path: Path) -> tuple[list[str], list[int]]:
    """Token strings by id and their types: added special tokens are control tokens, other
    added tokens user-defined; ids the tokenizer leaves empty (embedding rows rounded up, as
    the tiny models' 288) get unused placeholders, since llama.cpp takes the vocabulary size
    from this list and checks it against token_embd's rows."""
    by_id: dict[int, tuple[str, int]] = {
        i: (t, TokenType.NORMAL) for t, i in spec["model"]["vocab"].items()
    }
    for added in spec.get("added_tokens", []):
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if max(by_id, default=-1) >= vocab_size:
        raise StropError(
            f"{path}: token id {max(by_id)} is beyond the model's vocab_size {vocab_size}"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return tokens, types


def _end_of_turn(tok, special: set[int]) -> int | None:
    """The token that closes an assistant turn, found as training finds it: render a short
    conversation with strop's own chat tokenisation and take the last trained token. None
    when there is no template, or when it closes turns with plain text."""
    from strop.data.records import Message, Record
    from strop.data.render import tokenize_chat
    from strop.models.logps import IGNORE

    if not getattr(tok, "chat_template", None):
        return None
    record = Record(
        "<gguf export probe>", messages=[Message("user", "Hi"), Message("assistant", "Hello")]
    )
    try:
        sample = tokenize_chat(tok, record, mask="assistant")
    except StropError:
        return None
    targets = [y for y in sample.labels if y != IGNORE]
    return targets[-1] if targets and targets[-1] in special else None


def _generation_eos(model_dir: Path) -> list[int]:
    path = model_dir / "generation_config.json"
    try:
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    except (OSError, ValueError):
        return []
    if isinstance(eos, int):
        return [eos]
    return [int(i) for i in eos] if isinstance(eos, list) else []


def _template(template) -> str | list[dict] | None:
    if isinstance(template, dict):  # several named templates
        return [{"name": k, "template": v} for k, v in template.items()]
    return template or None
