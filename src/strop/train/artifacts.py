"""What a finished run leaves behind: final/ (PEFT adapter or HF model + tokenizer),
optionally final-merged/, a loss-curve PNG and report.md.

Model dirs are written under a hidden temporary name beside their final one and renamed once
complete (:func:`atomic_dir`), so a crash or a full disk never leaves a half-written final/
(e.g. config.json alone) for peft, transformers or `strop merge` to trip over."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from strop.errors import StropRuntimeError, disk_full
from strop.models import bottleneck


@contextlib.contextmanager
def atomic_dir(out: Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary dir beside ``out``; once the block finishes, it replaces
    ``out`` (an old ``out`` is moved aside first and removed last). On failure the temporary
    dir is removed, ``out`` is untouched, and a full disk becomes one StropRuntimeError."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.parent / f".{out.name}.tmp", out.parent / f".{out.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        err = disk_full(exc, out, needed_bytes)
        shutil.rmtree(tmp, ignore_errors=True)
        if err is None:
            raise
        raise StropRuntimeError(f"writing {out}: {err}") from None
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def tensor_bytes(tensors) -> int:
    """Bytes of a state dict's (or a module's parameters') tensors: what writing them needs."""
    items = tensors.values() if isinstance(tensors, dict) else tensors
    return sum(t.numel() * t.element_size() for t in items)


def full_state_dict(objective: nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The full (unsharded, CPU) state dict of the objective's submodule ``prefix`` (the inner
    model by default; "value_head." for PPO's critic); every rank must call this."""
    sd = get_model_state_dict(
        objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}


def save_final(
    model: nn.Module,
    state: dict,
    tokenizer,
    out: Path,
    is_adapter: bool,
    base_dir: Path,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write final/ atomically; ``extra`` adds safetensors files beside the weights (file name
    -> tensors, e.g. PPO's ``value_head.safetensors``)."""
    from safetensors.torch import save_file

    extra = {name: tensors for name, tensors in (extra or {}).items() if tensors}
    needed = tensor_bytes(state) + sum(tensor_bytes(t) for t in extra.values()) + (1 << 20)
    with atomic_dir(out, needed) as tmp:
        _write_model(model, state, tokenizer, tmp, is_adapter, base_dir)
        for name, tensors in extra.items():
            save_file(tensors, tmp / name)


def _write_model(
    model: nn.Module, state: dict, tokenizer, out: Path, is_adapter: bool, base_dir: Path
) -> None:
    if is_adapter and hasattr(model, "strop_adapter"):  # bottleneck adapters: strop's format
        bottleneck.save(model, state, out, base_dir)
        tokenizer.save_pretrained(out)
        return
    if is_adapter:
        # Adapters point at the local base dir so peft/transformers load them offline.
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = str(base_dir)
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)


def save_merged(model: nn.Module, tokenizer, out: Path) -> None:
    """Fold an adapter (LoRA, DoRA, IA3) into the base weights and write a plain HF dir."""
    # QLoRA hands over a model it already merged (into its dequantised base).
    merged = model.merge_and_unload(safe_merge=True) if hasattr(model, "peft_config") else model
    needed = tensor_bytes(merged.state_dict()) + (1 << 20)
    with atomic_dir(out, needed) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


# Per-step metrics worth a second panel, by the objective that logs them.
SIDE_METRICS = ("rewards/margin", "rewards/accuracy", "accuracy", "margin", "reward", "kl")


def plot_losses(run_dir: Path) -> Path | None:
    """loss.png from metrics.jsonl: training and eval loss per step and, for objectives that
    log them (preference, reward, KTO, RL), reward margin / accuracy / reward / KL in a second
    panel (with a 5-step moving average where there are 10 points or more)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None
    side = [k for k in SIDE_METRICS if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, 2 if side else 1, figsize=(12 if side else 7, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per unit (target token, pair or example)")
    ax.grid(alpha=0.3)
    ax.legend()
    if side:
        ax2 = axes[0][1]
        for k in side:
            points = [(r["step"], r[k]) for r in rows if k in r]
            (line,) = ax2.plot(*zip(*points, strict=True), label=f"train {k}", alpha=0.5)
            if len(points) >= 10:  # per-step RL rewards are noisy: show the trend too
                w = 5
                avg = [
                    sum(v for _, v in points[i - w + 1 : i + 1]) / w
                    for i in range(w - 1, len(points))
                ]
                steps = [s for s, _ in points[w - 1 :]]
                ax2.plot(steps, avg, color=line.get_color(), lw=2, label=f"{k} ({w}-step mean)")
            points = [(r["step"], r[f"eval_{k}"]) for r in rows if f"eval_{k}" in r]
            if points:
                ax2.plot(*zip(*points, strict=True), "o--", label=f"eval {k}")
        ax2.set_xlabel("optimizer step")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, summary: dict) -> Path:
    lines = ["# strop run report", ""]
    for key, value in summary.items():
        lines.append(f"- **{key}**: {value}")
    if (run_dir / "loss.png").exists():
        lines += ["", "![loss](loss.png)"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
