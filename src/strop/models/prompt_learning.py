"""Prompt-learning adapters (prompt tuning, P-tuning, prefix tuning) inside strop's own forward.

peft implements these methods in ``PeftModelForCausalLM.forward``: it prepends the virtual
tokens (or the key/value prefix) once per batch row. strop's objectives call the decoder
directly (to run the LM head at target positions only) and pack several documents into one
row, so that forward is bypassed and would be wrong anyway: only the row's first document
would see the virtual tokens. ``decoder_hidden`` below gives **every document** its own
virtual tokens, exactly as if it ran alone through peft's forward:

- input kinds (prompt tuning, P-tuning v1): each document becomes ``[v_1..v_n, x_1..x_L]``
  with positions ``0 .. n+L-1``, causal inside that block; the virtual positions are dropped
  from the returned hidden states, so callers see ``[B, T, d]`` aligned with their labels.
- prefix kinds (prefix tuning, P-tuning v2): the per-layer key/value prefix goes in as the
  KV cache; each document's tokens take positions ``n .. n+L-1`` and attend to the prefix
  plus their own causal block (strop.models.attention handles the prefix per document).

``lm_class()`` (PromptLearningLM) is peft's causal-LM wrapper with two fixes for callers outside training:
its ``forward`` returns logits for the real tokens only (peft returns ``n + T`` of them for
input kinds, which shifts every position-indexed read), and generation keeps position ids
under left padding (peft drops them for input kinds, so a padded prompt's positions counted
its padding: 5e-3 max logit difference against the same prompt alone on tiny-llama).
"""

from __future__ import annotations

import functools
import warnings

import torch

from strop.errors import StropError

# peft's PeftType values (a str enum; compared as strings so importing this module, which every
# objective does, does not import peft).
PREFIX_TYPES = ("PREFIX_TUNING",)
# strop's method names for peft's types, for error messages that name the user's config.
METHOD_NAMES = {
    "PROMPT_TUNING": "prompt",
    "P_TUNING": "ptuning",
    "PREFIX_TUNING": "prefix (or ptuning with deep: true)",
}


@functools.cache
def lm_class():
    """PromptLearningLM: peft's causal-LM wrapper for prompt learning, with the two fixes in
    the module docstring; same modules, same saved format. Built on first use (imports peft)."""
    from peft import PeftModelForCausalLM

    class PromptLearningLM(PeftModelForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            n = input_virtual_tokens(self)
            if n and getattr(out, "logits", None) is not None:
                out.logits = out.logits[:, n:]
            return out

        def prepare_inputs_for_generation(self, *args, **kwargs):
            # transformers derives position ids from the attention mask (padding excluded); peft
            # then drops them for input kinds. Put them back, shifted past the virtual tokens.
            with warnings.catch_warnings():  # peft warns that it drops them; restored below
                warnings.filterwarnings("ignore", message="Position ids are not supported")
                inputs = super().prepare_inputs_for_generation(*args, **kwargs)
            n = input_virtual_tokens(self)
            pos = kwargs.get("position_ids")
            if not n or pos is None:
                return inputs
            if inputs.get("inputs_embeds") is not None:  # prefill: virtual tokens injected here
                width = inputs["inputs_embeds"].shape[1] - n
                virtual = torch.arange(n, device=pos.device).expand(pos.shape[0], n)
                inputs["position_ids"] = torch.cat([virtual, pos[:, -width:] + n], dim=1)
            else:
                width = inputs["input_ids"].shape[1]
                inputs["position_ids"] = pos[:, -width:] + n
            return inputs

    return PromptLearningLM


def active_config(model):
    """The active prompt-learning peft config of ``model``, or None (other methods, or the
    adapter disabled, e.g. as a DPO reference)."""
    cfg = getattr(model, "active_peft_config", None)
    if cfg is None or not cfg.is_prompt_learning or getattr(model, "_adapters_disabled", False):
        return None
    return cfg


def input_virtual_tokens(model) -> int:
    """Number of virtual tokens prepended to the input (0 for prefix kinds and other methods)."""
    cfg = active_config(model)
    return 0 if cfg is None or cfg.peft_type in PREFIX_TYPES else cfg.num_virtual_tokens


def hidden_with_virtual_tokens(
    model,
    decoder,
    cfg,
    input_ids,
    attention_mask=None,
    position_ids=None,
    strop_doc_lens=None,
    strop_shared_prefix=None,
) -> torch.Tensor:
    """Last hidden states [B, T, d] of ``decoder`` at the given tokens with the active
    prompt-learning adapter's (``cfg``) virtual tokens / prefix applied per document; called
    by strop.models.logps.decoder_hidden, the one entry for every stage."""
    if strop_shared_prefix is not None:  # config validation refuses this first
        raise StropError("data.share_prefix: prompt-learning methods cannot share prefixes")
    extra = {"strop_doc_lens": strop_doc_lens} if strop_doc_lens is not None else {}
    if attention_mask is not None and attention_mask.dim() == 4:
        raise StropError(
            f"method {METHOD_NAMES.get(cfg.peft_type, cfg.peft_type)}: packed rows need "
            "model.attn: sdpa (per-document virtual tokens); set model.attn: sdpa or data.packing: false"
        )
    n, b, t = cfg.num_virtual_tokens, input_ids.shape[0], input_ids.shape[1]
    if position_ids is None:
        position_ids = _positions(strop_doc_lens, b, t, input_ids.device)
    if cfg.peft_type in PREFIX_TYPES:
        _check_prefix_reaches_layers(decoder, cfg)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        return decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids + n,  # positions 0..n-1 belong to the prefix
            past_key_values=model.get_prompt(b, max_cache_len=n + t),
            use_cache=True,
            **extra,
        ).last_hidden_state
    embeds = model.word_embeddings(input_ids)  # [B, T, d]
    prompt = model.get_prompt(1)[0].to(embeds.dtype)  # [n, d]
    if strop_doc_lens is not None:
        return _per_document(decoder, embeds, prompt, strop_doc_lens)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
    virtual = torch.arange(n, device=input_ids.device).expand(b, n)
    hidden = decoder(
        inputs_embeds=torch.cat([prompt.expand(b, -1, -1), embeds], dim=1),
        attention_mask=attention_mask,
        position_ids=torch.cat([virtual, position_ids + n], dim=1),
    ).last_hidden_state
    return hidden[:, n:]


def _positions(doc_lens, b: int, t: int, device) -> torch.Tensor:
    if doc_lens is None:
        return torch.arange(t, device=device).expand(b, t)
    return torch.stack(
        [torch.cat([torch.arange(n, device=device) for n in lens]) for lens in doc_lens]
    )


def _per_document(decoder, embeds, prompt, doc_lens) -> torch.Tensor:
    """Run ``[prompt, document]`` for every document of every row, each its own causal block,
    and return the hidden states of the real tokens only, [B, T, d]."""
    n, device = prompt.shape[0], embeds.device
    rows, positions, keeps, lens = [], [], [], []
    for b, row_lens in enumerate(doc_lens):
        pieces, pos, keep, start = [], [], [], 0
        for doc in embeds[b].split(row_lens):
            length = doc.shape[0]
            pieces += [prompt, doc]
            pos.append(torch.arange(n + length, device=device))
            keep.append(torch.arange(start + n, start + n + length, device=device))
            start += n + length
        rows.append(torch.cat(pieces))
        positions.append(torch.cat(pos))
        keeps.append(torch.cat(keep))
        lens.append([length + n for length in row_lens])
    width = max(r.shape[0] for r in rows)
    for i, r in enumerate(rows):  # rows with fewer documents: one more (ignored) document
        if r.shape[0] < width:
            pad = width - r.shape[0]
            rows[i] = torch.cat([r, r.new_zeros(pad, r.shape[1])])
            positions[i] = torch.cat([positions[i], torch.arange(pad, device=device)])
            lens[i] = lens[i] + [pad]
    hidden = decoder(
        inputs_embeds=torch.stack(rows),
        position_ids=torch.stack(positions),
        strop_doc_lens=lens,
    ).last_hidden_state
    return torch.stack([hidden[b, keep] for b, keep in enumerate(keeps)])


def _check_prefix_reaches_layers(decoder, cfg) -> None:
    # transformers' checkpointed layers drop past_key_values in training, which would train
    # (and evaluate) a model that silently ignores its prefix.
    if decoder.training and getattr(decoder, "gradient_checkpointing", False):
        raise StropError(
            f"method {METHOD_NAMES.get(cfg.peft_type, cfg.peft_type)}: train.gradient_checkpointing drops the key/value "
            "prefix inside checkpointed layers; set train.gradient_checkpointing: false"
        )


def wrap(model, peft_config, method: str):
    """``get_peft_model`` for a prompt-learning config, as a PromptLearningLM."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        raise StropError(f"method {method}: stage rm is not supported (causal LMs only)")
    return lm_class()(model, peft_config)


def load(model, adapter_dir):
    """Load a saved prompt-learning adapter onto ``model`` (inference) as a PromptLearningLM."""
    from peft import PeftConfig

    cfg = PeftConfig.from_pretrained(str(adapter_dir))
    cfg.inference_mode = True  # peft then uses the saved prompt as is (no encoder/MLP)
    wrapped = lm_class()(model, cfg)
    wrapped.load_adapter(str(adapter_dir), "default", is_trainable=False)
    return wrapped.eval()


def is_prompt_learning_dir(adapter_config: dict) -> bool:
    return adapter_config.get("peft_type") in METHOD_NAMES
