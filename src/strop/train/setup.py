"""A training run assembled before its first step: the transformed model and its data, the
objective (with its reference prepared), the optimizer, the data order and the trainer state
(fresh or resumed). strop.train.loop then runs the steps."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from strop.config.schema import Config
from strop.data.batching import ShardedSampler
from strop.data.dataset import build_datasets
from strop.errors import StropError
from strop.models.load import frozen_linears_to, load_model, use_bf16_autocast
from strop.models.transforms import TRANSFORMS, count_trainable
from strop.train import checkpoint, distributed
from strop.train.objectives import OBJECTIVES, Objective, Setting
from strop.train.optim import build_optimizer
from strop.train.task_eval import TaskEvaluator


def autocast(precision: str, device: torch.device):
    """bf16 autocast where the training precision asks for it, else nothing."""
    if use_bf16_autocast(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Run:
    """Everything one training run holds, built once by ``_setup`` and passed around whole
    instead of long argument lists."""

    cfg: Config
    d: distributed.Dist
    run_dir: Path
    log: Callable
    model: torch.nn.Module
    tokenizer: Any
    model_dir: Path
    data: Any  # strop.data.dataset.Datasets
    objective: Objective
    module: torch.nn.Module  # the objective, wrapped for DDP/FSDP2
    optimizer: torch.optim.Optimizer
    sampler: ShardedSampler
    total_steps: int
    state: dict  # step, tokens, nan_skips (+ sampler / rollout when saved)
    task_eval: TaskEvaluator | None = None
    history: list[dict] = field(default_factory=list)
    last_eval: dict | None = None
    eval_step: int = -1

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def autocast(self):
        return autocast(self.cfg.train.precision, self.d.device)


def load_model_and_data(cfg: Config, d: distributed.Dist, run_dir: Path, log):
    """The transformed model, its tokenizer and base dir, and the tokenised data."""
    method = cfg.method
    torch.manual_seed(cfg.train.seed)  # same init on every rank
    model, tokenizer, model_dir = load_model(
        cfg.model.name, cfg.model.dtype, attn=cfg.model.attn, head=OBJECTIVES[cfg.stage].model_head
    )
    model = TRANSFORMS[method.name].apply(model, method)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(d.device)
    if method.is_adapter and use_bf16_autocast(cfg.train.precision, d.device):
        frozen_linears_to(model, torch.bfloat16)
    data = build_datasets(
        cfg.data, cfg.stage, tokenizer, cfg.train.seed, run_dir if d.is_main else None
    )
    for s in data.summaries:
        log(s)
    trainable, total = count_trainable(model)
    log(
        f"method {method.name}: {trainable:,} of {total:,} parameters train "
        f"({100 * trainable / total:.3f}%)"
    )
    log(f"train: {data.train.stats.describe()}; {len(data.train.rows)} rows")
    if data.eval:
        log(f"eval:  {data.eval.stats.describe()}; {len(data.eval.rows)} rows")
    return model, tokenizer, model_dir, data


def setup_run(cfg: Config, d: distributed.Dist, run_dir: Path, log) -> Run:
    # Eval tasks are parsed and their examples read first: a bad file stops the run before
    # any model work.
    task_eval = TaskEvaluator(cfg.train.eval_tasks, "config", cfg.train.seed)
    model, tokenizer, model_dir, data = load_model_and_data(cfg, d, run_dir, log)
    objective = OBJECTIVES[cfg.stage].from_config(model, cfg)
    splits = [split.rows for split in (data.train, data.eval) if split]
    doc_attention = cfg.model.attn == "sdpa"  # see strop.models.attention
    precision = lambda: autocast(cfg.train.precision, d.device)  # noqa: E731
    setting = Setting(cfg, d.device, tokenizer.pad_token_id, doc_attention, precision, log, splits)
    objective.prepare(setting)
    module = distributed.wrap(objective, d)
    transform = TRANSFORMS[cfg.method.name]
    lr_mult = transform.lr_multipliers(model, cfg.method) if transform.lr_multipliers else {}
    optimizer = build_optimizer(objective, cfg.train, lr_mult)
    sampler = ShardedSampler(
        len(data.train.rows),
        cfg.train.batch_size * cfg.train.grad_accum,
        cfg.train.seed,
        d.rank,
        d.world,
    )
    total_steps = _total_steps(cfg, sampler)
    run = Run(
        cfg,
        d,
        run_dir,
        log,
        model,
        tokenizer,
        model_dir,
        data,
        objective,
        module,
        optimizer,
        sampler,
        total_steps,
        state={},
    )
    run.state = _resume(run)
    run.task_eval = task_eval or None
    return run


def _resume(run: Run) -> dict:
    """The trainer state: restored from the checkpoint train.resume names, or a fresh one."""
    cfg, d = run.cfg, run.d
    resume_from = checkpoint.find_resume(run.run_dir / "checkpoints", cfg.train.resume)
    if resume_from is None:
        torch.manual_seed(cfg.train.seed + d.rank)  # dropout differs per rank, reproducibly
        return {"step": 0, "tokens": 0, "nan_skips": 0}
    state = checkpoint.load_checkpoint(resume_from, run.module, run.optimizer)
    run.sampler.load_state_dict(state["sampler"])
    if "rollout" in state:
        run.objective.load_rollout_state(state["rollout"])
    run.log(f"resumed from {resume_from} at step {state['step']}")
    return state


def _total_steps(cfg: Config, sampler: ShardedSampler) -> int:
    if sampler.steps_per_epoch == 0:
        need = cfg.train.batch_size * cfg.train.grad_accum
        raise StropError(
            f"{cfg.data.train}: {sampler.n_rows} training rows cannot fill one optimizer step "
            f"(train.batch_size x train.grad_accum x processes = {need * sampler.world})"
        )
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * sampler.steps_per_epoch))
