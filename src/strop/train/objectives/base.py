"""The contract between the one training loop and an objective.

The loop calls these hooks and nothing else: it never asks an objective what it can do and
never names a stage. Every hook but ``collate``, ``units`` and ``forward`` has a default that
does nothing, so a small objective (SFT's) implements three methods.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from strop.config.schema import Config
from strop.data.batching import Row


@dataclass
class Setting:
    """What an objective may need from the run before the first update."""

    cfg: Config
    device: torch.device
    pad_id: int
    doc_attention: bool  # collate with strop's per-document attention (model.attn: sdpa)
    autocast: Callable[[], AbstractContextManager]  # the training precision's autocast
    log: Callable[[str], Any]
    splits: list[list[Row]]  # the train rows, then the eval rows if any


class Objective(nn.Module):
    """Wraps the model so DDP/FSDP wrap one module whose forward returns the loss *sum*.

    ``forward(**batch)`` returns ``{"loss_sum", "units", "metrics": {name: sum}}``: the loop
    divides by the global count of units (target tokens, pairs, examples) over micro-batches
    and ranks, so accumulation and ragged lengths give exactly one big batch's loss.
    """

    model_head: ClassVar[str] = "causal_lm"
    """The head strop.models.load builds: causal_lm, or reward (a scalar value head)."""
    perplexity: ClassVar[bool] = False
    """The eval loss is a per-token cross-entropy, so eval also reports exp(loss)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.share_prefix = False  # collated micro-batches compute a common opening once
        self.step_metrics: dict[str, float] = {}  # logged with the step just taken

    @classmethod
    def from_config(cls, model: nn.Module, cfg: Config) -> Objective:
        return cls(model, cfg)

    # -- required ---------------------------------------------------------------------------
    def collate(self, rows: list[Row], pad_id: int, doc_attention: bool) -> dict:
        raise NotImplementedError

    def units(self, batch: dict) -> torch.Tensor:
        """What the loss is normalised by, in this micro-batch."""
        raise NotImplementedError

    # -- hooks with defaults ----------------------------------------------------------------
    def prepare(self, setting: Setting) -> None:
        """Before any update: e.g. load a frozen reference or score the data with the initial
        policy."""

    def rollout(self, take: Callable[[], list[Row]], step: int) -> list[Row]:
        """The rows optimizer step ``step`` trains on; ``take()`` gives the next rows of the
        data order. Online RL samples completions for them here."""
        return take()

    def evaluate_rows(self, rows: list[Row]) -> dict[str, float] | None:
        """Its own held-out evaluation, or None for the loop's (mean loss over eval rows)."""
        return None

    def rollout_state(self) -> dict | None:
        """What a checkpoint must carry beyond weights, optimizer and data order (e.g.
        rollouts an unfinished update cycle reuses), as plain data; None for nothing."""
        return None

    def load_rollout_state(self, state: dict) -> None:
        """Restore what rollout_state returned."""

    def extra_artifacts(self) -> dict[str, str]:
        """Files final/ holds beside the model: {file name: prefix of this module's state
        dict} (PPO's value head)."""
        return {}
