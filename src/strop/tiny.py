"""Tiny random-weight models with tokenizers built in code: no downloads, deterministic.

They exist for tests and examples: real architectures (Llama, Qwen2) and real chat-template
styles (Llama-3 headers; ChatML as SmolLM2 and Qwen use), at a size that trains in
milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# Llama-3 style: one BOS, header-delimited roles, <|eot_id|> closes every turn.
LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# ChatML with a default system turn (the style SmolLM2-Instruct ships); no BOS token.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_STYLES = {
    "llama": {
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|pad|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|pad|>",
        "template": LLAMA3_STYLE_TEMPLATE,
    },
    "qwen2": {
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|pad|>",
        "template": CHATML_TEMPLATE,
    },
}

VOCAB_SIZE = 288  # 256 byte symbols + specials, rounded up


def build_tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (every byte is a token; no merges) with the arch's special tokens."""
    style = _STYLES[arch]
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {sym: i for i, sym in enumerate(byte_symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(style["specials"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=style["bos"],
        eos_token=style["eos"],
        pad_token=style["pad"],
        unk_token=None,
    )
    fast.chat_template = style["template"]
    return fast


def build_tiny_model(arch: str, out: Path, seed: int = 0) -> None:
    """Write a tiny random model + tokenizer as an HF dir at ``out``."""
    tok = build_tiny_tokenizer(arch)
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(**common))
        else:  # Qwen2 has q/k/v biases: the tiny model BitFit can train
            model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
