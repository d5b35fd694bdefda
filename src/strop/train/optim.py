"""AdamW (torch's, or bitsandbytes' 8-bit / paged variants) and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from strop.config.schema import TrainSection


def build_optimizer(
    model: nn.Module, cfg: TrainSection, lr_multipliers: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW over trainable parameters. Biases and norms get no weight decay; parameters named
    in ``lr_multipliers`` (LoRA+) get their own learning rate."""
    lr_multipliers = lr_multipliers or {}
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim < 2 else cfg.weight_decay
        mult = next((m for n, m in lr_multipliers.items() if name.endswith(n)), 1.0)
        groups.setdefault((decay, mult), []).append(p)
    param_groups = [
        {"params": ps, "weight_decay": d, "lr": cfg.lr * m, "lr_mult": m}
        for (d, m), ps in groups.items()
    ]
    if cfg.optimizer != "adamw":
        return _bitsandbytes(param_groups, cfg)
    # Fused AdamW is one kernel per step on CUDA and CPU; fall back where a dtype lacks it.
    devices = {p.device.type for g in param_groups for p in g["params"]}
    fused = devices <= {"cuda", "cpu"}
    try:
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.adam_betas, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.adam_betas)


# train.optimizer -> bitsandbytes class. 8-bit: Adam's two moments stored as 8-bit blockwise
# quantised values (Dettmers et al., 2022), ~75% less optimizer memory; tensors under 4096
# elements keep 32-bit moments. Paged: moments in CUDA unified memory that the driver pages to
# CPU RAM under memory pressure instead of running out (the QLoRA paper's paged optimisers).
BNB_OPTIMIZERS = {
    "adamw_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
}


def _bitsandbytes(param_groups: list[dict], cfg: TrainSection) -> torch.optim.Optimizer:
    """bitsandbytes 0.50.2 runs all three on CPU too (tested): 8-bit moments work, and the
    paged ones fall back to ordinary (unpaged) memory, warning at their first step; strop says
    so once, up front, instead."""
    import warnings

    import bitsandbytes as bnb

    devices = {p.device.type for g in param_groups for p in g["params"]}
    if cfg.optimizer.startswith("paged_") and "cuda" not in devices:
        print(f"train.optimizer: {cfg.optimizer}: paging needs CUDA; on CPU it runs unpaged")
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
    cls = getattr(bnb.optim, BNB_OPTIMIZERS[cfg.optimizer])
    return cls(param_groups, lr=cfg.lr, betas=cfg.adam_betas)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step`` (0-based): linear warmup, then the schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        shape = 1.0 - progress
    else:  # cosine
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def warmup_steps(cfg: TrainSection, total: int) -> int:
    return int(cfg.warmup) if cfg.warmup >= 1 else int(round(cfg.warmup * total))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g.get("lr_mult", 1.0) * factor
    return base_lr * factor
