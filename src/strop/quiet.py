"""Library chatter strop replaces with its own progress and messages."""

from __future__ import annotations

import logging
import warnings


def quiet_transformers() -> None:
    """transformers 5 prints a progress bar per load; strop shows its own progress instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # bitsandbytes (imported by peft) warns on every CPU import that an optional hub kernel
    # package is missing; strop never fetches kernels from a hub, so the warning is noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # peft still calls this deprecated transformers property; nothing for users to act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
