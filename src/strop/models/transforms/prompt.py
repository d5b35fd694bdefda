"""Prompt tuning (Lester et al., 2021): ``virtual_tokens`` trainable embeddings prepended to
every document's input; the model's own weights stay frozen.

Through peft's PromptTuningConfig, so the adapter is a standard peft PROMPT_TUNING dir. With
``init_text`` the virtual tokens start as the embeddings of that text's tokens (repeated or cut
to ``virtual_tokens``), which the paper found trains faster and more stably than random init.
"""

from __future__ import annotations

from strop.config.methods import PromptMethod
from strop.models.prompt_learning import wrap


def apply(model, params: PromptMethod):
    from peft import PromptTuningConfig

    text = params.init_text is not None
    cfg = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=params.virtual_tokens,
        prompt_tuning_init="TEXT" if text else "RANDOM",
        prompt_tuning_init_text=params.init_text,
        # peft tokenises init_text with this tokenizer: the local model dir (never a hub id).
        tokenizer_name_or_path=model.name_or_path if text else None,
    )
    return wrap(model, cfg, "prompt")
