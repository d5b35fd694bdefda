"""THE training loop: every stage, every method, one process or many.

It owns accumulation, loss normalisation by the global count of target tokens, clipping, the
schedule, precision, checkpoint/resume, eval and logging. It never branches on the stage name:
the stage only picks the objective (strop.train.objectives) and the data kind.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from strop.config.load import dump_config
from strop.config.schema import Config
from strop.data.batching import Row, ShardedSampler, shared_tokens
from strop.data.dataset import build_datasets
from strop.data.render import IGNORE
from strop.errors import StropError, StropRuntimeError
from strop.models.load import frozen_linears_to, load_model, use_bf16_autocast
from strop.models.transforms import count_trainable, parse_method
from strop.train import artifacts, checkpoint, distributed
from strop.train.logger import MetricsLogger
from strop.train.loss_sums import LossSums
from strop.train.objectives import OBJECTIVES
from strop.train.optim import build_optimizer, lr_factor, set_lr, warmup_steps
from strop.train.task_eval import TaskEvaluator

FAULT_ENV = "STROP_FAULT_AFTER_STEP"  # fault injection for the exact-resume test


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved at ``step``."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step}; checkpoint saved, rerun to resume")
        self.step, self.exit_code = step, 128 + signum


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    final_dir: Path | None
    history: list[dict] = field(default_factory=list)
    eval_loss: float | None = None


def _autocast(precision: str, device: torch.device):
    if use_bf16_autocast(precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


class _Signals:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            # signal() raises ValueError off the main thread (e.g. a test runner's thread).
            with contextlib.suppress(ValueError):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


@torch.no_grad()
def evaluate(module, objective, rows, cfg: Config, d: distributed.Dist, pad_id: int) -> dict:
    """Mean loss per unit (target token, pair, example) and the objective's metrics over the
    eval rows, all ranks; perplexity for token-level objectives."""
    if hasattr(objective, "evaluate_rows"):  # online RL: score greedy completions
        with _autocast(cfg.train.precision, d.device):
            return objective.evaluate_rows(rows)
    module.eval()
    sums = LossSums(d.device)
    mine, bs = rows[d.rank :: d.world], cfg.train.batch_size
    # Every rank runs the same number of forwards (FSDP2 all-gathers weights in each); a rank
    # out of rows runs one on a row without targets, which adds nothing to the sums.
    r0 = rows[0]
    blank = Row(r0.input_ids, [IGNORE] * len(r0.input_ids), r0.doc_lens, dict(r0.values))
    for i in range(math.ceil(math.ceil(len(rows) / d.world) / bs)):
        rows_i = mine[i * bs : (i + 1) * bs] or [blank]
        batch = _to(objective.collate(rows_i, pad_id, cfg.model.attn == "sdpa"), d.device)
        with _autocast(cfg.train.precision, d.device):
            out = module(**batch)
        sums.add(out)
    module.train()
    loss, metrics = sums.reduce(d)
    result = {"eval_loss": loss, **{f"eval_{k}": v for k, v in metrics.items()}}
    if getattr(objective, "perplexity", False):
        result["eval_ppl"] = math.exp(min(loss, 50.0))
    return result


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


def _step_batches(objective, rows, cfg: Config, pad_id: int, device) -> tuple[list, torch.Tensor]:
    """This rank's ``grad_accum`` micro-batches of one optimizer step's rows and their counts
    [loss units, target tokens]. Rows number batch_size x grad_accum, unless an objective's
    rollout made them (e.g. group_size completions per prompt)."""
    bs = math.ceil(len(rows) / cfg.train.grad_accum)
    doc_attn = cfg.model.attn == "sdpa"  # see strop.models.attention
    batches = [
        _to(objective.collate(rows[i : i + bs], pad_id, doc_attn), device)
        for i in range(0, len(rows), bs)
    ]
    counts = [
        (objective.units(b), (b["labels"][:, 1:] != IGNORE).sum()) for b in batches
    ]  # (loss units, target tokens): the same for token-level objectives
    n_local = torch.tensor([[float(u), float(t)] for u, t in counts], dtype=torch.float64)
    return batches, n_local.sum(0).to(device)


def _shared_fraction(batches: list[dict], d: distributed.Dist) -> float:
    """Of the input tokens this step's batches hold (all ranks), the fraction data.share_prefix
    did not compute because another document in the micro-batch opens with them."""
    computed, saved = map(sum, zip(*(shared_tokens(b) for b in batches), strict=True))
    local = torch.tensor([computed, saved], dtype=torch.float64, device=d.device)
    computed, saved = d.all_sum(local).tolist()
    return saved / max(computed + saved, 1.0)


def _prepare(cfg: Config, d: distributed.Dist, run_dir: Path, log=print):
    transform, params = parse_method(cfg.method)
    torch.manual_seed(cfg.train.seed)  # same init on every rank
    head = getattr(OBJECTIVES.get(cfg.stage), "model_head", "causal_lm")  # rm: a value head
    model, tokenizer, model_dir = load_model(
        cfg.model.name, cfg.model.dtype, attn=cfg.model.attn, head=head
    )
    model = transform.apply(model, params)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(d.device)
    if transform.is_adapter and use_bf16_autocast(cfg.train.precision, d.device):
        frozen_linears_to(model, torch.bfloat16)
    data = build_datasets(
        cfg.data, cfg.stage, tokenizer, cfg.train.seed, run_dir if d.is_main else None
    )
    for s in data.summaries:
        log(s)
    trainable, total = count_trainable(model)
    log(
        f"method {cfg.method['name']}: {trainable:,} of {total:,} parameters train "
        f"({100 * trainable / total:.3f}%)"
    )
    log(f"train: {data.train.stats.describe()}; {len(data.train.rows)} rows")
    if data.eval:
        log(f"eval:  {data.eval.stats.describe()}; {len(data.eval.rows)} rows")
    lr_mult = transform.lr_multipliers(model, params) if transform.lr_multipliers else {}
    return transform, model, tokenizer, model_dir, data, lr_mult


def _resume(cfg: Config, ckpt_root: Path, module, optimizer, sampler, d, log) -> dict:
    """The trainer state: restored from the checkpoint train.resume names, or a fresh one."""
    resume_from = checkpoint.find_resume(ckpt_root, cfg.train.resume)
    if resume_from is None:
        torch.manual_seed(cfg.train.seed + d.rank)  # dropout differs per rank, reproducibly
        return {"step": 0, "tokens": 0, "nan_skips": 0}
    state = checkpoint.load_checkpoint(resume_from, module, optimizer)
    sampler.load_state_dict(state["sampler"])
    log(f"resumed from {resume_from} at step {state['step']}")
    return state


def train(cfg: Config) -> RunResult:
    d = distributed.setup(cfg.train.distributed)
    run_dir = Path(cfg.train.output_dir)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    log = print if d.is_main else (lambda *a, **k: None)
    try:
        return _run(cfg, d, run_dir, log)
    finally:
        distributed.teardown()


def _run(cfg: Config, d: distributed.Dist, run_dir: Path, log) -> RunResult:
    transform, model, tokenizer, model_dir, data, lr_mult = _prepare(cfg, d, run_dir, log)
    objective = OBJECTIVES[cfg.stage](model, cfg)
    _prepare_reference(objective, cfg, data, tokenizer.pad_token_id, d, log)
    module = distributed.wrap(objective, d)
    optimizer = build_optimizer(objective, cfg.train, lr_mult)
    params = [p for p in objective.parameters() if p.requires_grad]
    rows = data.train.rows
    sampler = ShardedSampler(
        len(rows), cfg.train.batch_size * cfg.train.grad_accum, cfg.train.seed, d.rank, d.world
    )
    total_steps = _total_steps(cfg, sampler)
    warmup = warmup_steps(cfg.train, total_steps)
    ckpt_root = run_dir / "checkpoints"
    state = _resume(cfg, ckpt_root, module, optimizer, sampler, d, log)
    if "rollout" in state:
        objective.load_rollout_state(state["rollout"])
    pad_id = tokenizer.pad_token_id
    logger = MetricsLogger(
        run_dir,
        total_steps,
        state["step"],
        state["tokens"],
        d.is_main,
        cfg.train.progress,
        cfg.train.tensorboard,
    )
    history: list[dict] = []
    last_eval, eval_step = None, -1
    task_eval = TaskEvaluator(cfg.train.eval_tasks, "config", cfg.train.seed)

    def run_eval() -> dict:
        result = evaluate(module, objective, data.eval.rows, cfg, d, pad_id) if data.eval else {}
        return {**result, **(task_eval(model, tokenizer) if task_eval else {})}

    def save(step: int) -> None:
        state["sampler"] = sampler.state_dict()
        if hasattr(objective, "rollout_state"):  # rollouts an unfinished update cycle reuses
            state["rollout"] = objective.rollout_state()
        checkpoint.save_checkpoint(ckpt_root, step, module, optimizer, state, cfg.train.keep_last)

    module.train()
    with _Signals() as signals:
        while state["step"] < total_steps:
            # Every rank must agree to stop at the same step, or their collectives mismatch.
            flag = torch.tensor(float(signals.signum > 0), device=d.device)
            if d.all_sum(flag).item() > 0:
                save(state["step"])
                logger.close()
                raise Interrupted(state["step"], signals.signum or signal.SIGTERM)
            step = state["step"]
            take = lambda: [rows[j] for j in sampler.next_step()]  # noqa: E731
            # Online RL objectives sample completions for the step's rows here, in the training
            # precision (bf16 frozen weights need autocast; sampled log-probs match training's).
            with _autocast(cfg.train.precision, d.device):
                step_rows = (
                    objective.rollout(take, step) if hasattr(objective, "rollout") else take()
                )
            batches, n_local = _step_batches(objective, step_rows, cfg, pad_id, d.device)
            n_global, tokens = d.all_sum(n_local.clone()).clamp(min=1).unbind()
            loss, metrics = _forward_backward(module, batches, n_global, cfg, d)
            if getattr(objective, "share_prefix", False):
                metrics["shared_frac"] = _shared_fraction(batches, d)
            max_norm = cfg.train.max_grad_norm or float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            factor = lr_factor(
                step, total_steps, warmup, cfg.train.schedule, cfg.train.min_lr_ratio
            )
            lr = set_lr(optimizer, cfg.train.lr, factor)
            if math.isfinite(loss) and math.isfinite(grad_norm):
                optimizer.step()
            else:
                _handle_nonfinite(cfg, state, step, loss, grad_norm, log)
            optimizer.zero_grad(set_to_none=True)
            state["step"] = step + 1
            state["tokens"] += int(tokens.item())
            record = {
                "step": step + 1,
                "epoch": round(sampler.epoch + sampler.step_in_epoch / sampler.steps_per_epoch, 4),
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": state["tokens"],
                "nan_skips": state["nan_skips"],
                **metrics,
                **getattr(objective, "step_metrics", {}),
            }
            history.append(record)
            logger.step(record, cfg.train.log_every, last=step + 1 == total_steps)
            if (
                (data.eval or task_eval)
                and cfg.train.eval_every
                and ((step + 1) % cfg.train.eval_every == 0)
            ):
                last_eval = run_eval()
                eval_step = step + 1
                logger.log({"step": step + 1, **last_eval})
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                save(step + 1)
            if os.environ.get(FAULT_ENV) == str(step + 1):  # tests: a real SIGTERM mid-run
                os.kill(os.getpid(), signal.SIGTERM)
    if (data.eval or task_eval) and eval_step != state["step"]:  # always eval the final weights
        last_eval = run_eval()
        logger.log({"step": state["step"], **last_eval})
    logger.close()
    final_dir = _finish(
        cfg, d, run_dir, objective, model, tokenizer, model_dir, transform, state, last_eval
    )
    return RunResult(
        run_dir, state["step"], final_dir, history, last_eval and last_eval.get("eval_loss")
    )


def _forward_backward(module, batches: list[dict], n_global, cfg: Config, d) -> tuple:
    """Accumulate gradients of one optimizer step; returns its loss per unit (target token,
    pair or example) and the objective's metrics averaged the same way."""
    sums = LossSums(d.device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = module.no_sync() if (d.mode == "ddp" and not last) else contextlib.nullcontext()
        with sync, _autocast(cfg.train.precision, d.device):
            out = module(**batch)
            # Gradients are averaged over ranks by DDP/FSDP, hence the x world.
            (out["loss_sum"] * (d.world / n_global)).backward()
        sums.add(out)
    return sums.reduce(d, n_global)


def _prepare_reference(objective, cfg: Config, data, pad_id: int, d, log) -> None:
    """Reference log-probs or model for objectives that need one (DPO family, KTO), before
    any update: the initial policy scores the data (precompute), or a frozen copy loads."""
    mode = getattr(objective, "mode", None)
    if mode == "model":
        objective.load_reference_model(cfg, d.device)
        log(f"reference: {objective.section.reference_model or cfg.model.name}, frozen")
    elif mode == "precompute":
        doc_attn = cfg.model.attn == "sdpa"
        for split in filter(None, (data.train, data.eval)):
            objective.precompute_reference(
                split.rows,
                pad_id,
                doc_attn,
                d.device,
                lambda: _autocast(cfg.train.precision, d.device),
            )
        log("reference: log-probs precomputed with the initial policy (no reference model kept)")


def _handle_nonfinite(
    cfg: Config, state: dict, step: int, loss: float, grad_norm: float, log
) -> None:
    what = f"loss {loss}, grad norm {grad_norm}"
    if cfg.train.nan_policy == "stop":
        raise StropRuntimeError(f"non-finite {what} at step {step + 1}; stopping (nan_policy=stop)")
    state["nan_skips"] += 1
    log(f"step {step + 1}: non-finite {what}; update skipped ({state['nan_skips']} so far)")
    if state["nan_skips"] > cfg.train.max_nan_skips:
        raise StropRuntimeError(
            f"{state['nan_skips']} non-finite steps (last at step {step + 1}) exceed "
            f"train.max_nan_skips={cfg.train.max_nan_skips}; check lr and data"
        )


def _finish(cfg, d, run_dir, objective, model, tokenizer, model_dir, transform, state, last_eval):
    full = artifacts.full_state_dict(objective)  # a collective: every rank takes part
    critic = artifacts.full_state_dict(objective, "value_head.") if cfg.stage == "ppo" else {}
    final_dir = run_dir / "final"
    merge_err = None
    if d.is_main:
        artifacts.save_final(model, full, tokenizer, final_dir, transform.is_adapter, model_dir)
        if critic:  # PPO's value head, beside the policy (for inspection or warm starts)
            save_file(critic, final_dir / "value_head.safetensors")
        if cfg.train.save_merged and transform.is_adapter:
            if transform.merge is not None:  # e.g. QLoRA: into the dequantised base
                params = parse_method(cfg.method)[1]
                merged_src, merge_err = transform.merge(
                    model_dir, cfg.model.dtype, final_dir, params, cfg.model.attn
                )
                print(f"merged: max |logit diff| to the trained model {merge_err:.2e}")
            else:
                head = getattr(objective, "model_head", "causal_lm")
                merged_src, _, _ = load_model(
                    str(model_dir), cfg.model.dtype, adapter=str(final_dir), head=head
                )
            artifacts.save_merged(merged_src, tokenizer, run_dir / "final-merged")
        artifacts.plot_losses(run_dir)
        summary = {
            "stage": cfg.stage,
            "method": cfg.method["name"],
            "model": cfg.model.name,
            "steps": state["step"],
            "target tokens trained": state["tokens"],
            "non-finite steps skipped": state["nan_skips"],
            "final": str(final_dir),
        }
        if merge_err is not None:
            summary["merge: max |logit diff| to the trained model"] = f"{merge_err:.2e}"
        if last_eval:
            summary.update({k: round(v, 4) for k, v in last_eval.items()})
        artifacts.write_report(run_dir, summary)
    return final_dir
