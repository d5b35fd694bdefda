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

from strop.config.load import dump_config
from strop.config.schema import Config
from strop.data.batching import Row, shared_tokens
from strop.data.render import IGNORE
from strop.errors import StropRuntimeError
from strop.models.load import load_model
from strop.models.transforms import TRANSFORMS
from strop.train import artifacts, checkpoint, distributed
from strop.train import run_dir as run_dirs
from strop.train.logger import MetricsLogger
from strop.train.loss_sums import LossSums
from strop.train.objectives import Objective
from strop.train.optim import lr_factor, set_lr, warmup_steps
from strop.train.setup import Run, autocast, setup_run

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
def evaluate(module, objective: Objective, rows, cfg: Config, d: distributed.Dist, pad_id: int):
    """Mean loss per unit (target token, pair, example) and the objective's metrics over the
    eval rows, all ranks; perplexity for token-level objectives. An objective with its own
    evaluation (online RL scores greedy completions) answers instead."""
    with autocast(cfg.train.precision, d.device):
        own = objective.evaluate_rows(rows)
    if own is not None:
        return own
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
        with autocast(cfg.train.precision, d.device):
            out = module(**batch)
        sums.add(out)
    module.train()
    loss, metrics = sums.reduce(d)
    result = {"eval_loss": loss, **{f"eval_{k}": v for k, v in metrics.items()}}
    if objective.perplexity:
        result["eval_ppl"] = math.exp(min(loss, 50.0))
    return result


def step_batches(objective, rows, cfg: Config, pad_id: int, device) -> tuple[list, torch.Tensor]:
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


def train(cfg: Config) -> RunResult:
    d = distributed.setup(cfg.train.distributed)
    run_dir = Path(cfg.train.output_dir)
    if d.is_main:  # checked, locked and compared with what it holds before anything is written
        run_dir = run_dirs.claim(cfg)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        run_dirs.record_inputs(cfg, run_dir)
    log = print if d.is_main else (lambda *a, **k: None)
    try:
        run = setup_run(cfg, d, run_dir, log)
        _train_steps(run)
        _check_outcome(run)
        final_dir = _finish(run)
        eval_loss = run.last_eval and run.last_eval.get("eval_loss")
        return RunResult(run_dir, run.state["step"], final_dir, run.history, eval_loss)
    finally:
        run_dirs.release(run_dir)
        distributed.teardown()


def _check_outcome(run: Run) -> None:
    """A run that diverged must not look like one that trained: non-finite final weights, or
    most steps skipped as non-finite, end with a sentence and exit code 1 (and no final/)."""
    state, steps = run.state, max(run.state["step"], 1)
    if state["nan_skips"] * 2 > steps:
        raise StropRuntimeError(
            f"{state['nan_skips']} of {steps} steps were skipped as non-finite, so the run did "
            "not train; lower train.lr or check the data (no final/ written)"
        )
    bad = [
        n
        for n, p in run.objective.named_parameters()
        if p.requires_grad and not torch.isfinite(p.detach()).all()
    ]
    if bad:
        raise StropRuntimeError(
            f"the trained weights are not finite ({len(bad)} tensors, e.g. {bad[0]}): the run "
            "diverged; lower train.lr (no final/ written)"
        )


def _run_eval(run: Run) -> dict:
    data = run.data
    result = (
        evaluate(run.module, run.objective, data.eval.rows, run.cfg, run.d, run.pad_id)
        if data.eval
        else {}
    )
    return {**result, **(run.task_eval(run.model, run.tokenizer) if run.task_eval else {})}


def _save(run: Run, step: int) -> None:
    run.state["sampler"] = run.sampler.state_dict()
    rollout = run.objective.rollout_state()  # rollouts an unfinished update cycle reuses
    if rollout is not None:
        run.state["rollout"] = rollout
    checkpoint.save_checkpoint(
        run.run_dir / "checkpoints",
        step,
        run.module,
        run.optimizer,
        run.state,
        run.cfg.train.keep_last,
    )


def _train_steps(run: Run) -> None:
    cfg, d, state = run.cfg, run.d, run.state
    logger = MetricsLogger(
        run.run_dir,
        run.total_steps,
        state["step"],
        state["tokens"],
        d.is_main,
        cfg.train.progress,
        cfg.train.tensorboard,
    )
    evaluating = bool(run.data.eval or run.task_eval)
    run.module.train()
    with _Signals() as signals:
        while state["step"] < run.total_steps:
            # Every rank must agree to stop at the same step, or their collectives mismatch.
            flag = torch.tensor(float(signals.signum > 0), device=d.device)
            if d.all_sum(flag).item() > 0:
                _save(run, state["step"])
                logger.close()
                raise Interrupted(state["step"], signals.signum or signal.SIGTERM)
            step = state["step"]
            record = _one_step(run, step)
            run.history.append(record)
            logger.step(record, cfg.train.log_every, last=step + 1 == run.total_steps)
            if evaluating and cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0:
                run.last_eval, run.eval_step = _run_eval(run), step + 1
                logger.log({"step": step + 1, **run.last_eval})
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0:
                _save(run, step + 1)
            if os.environ.get(FAULT_ENV) == str(step + 1):  # tests: a real SIGTERM mid-run
                os.kill(os.getpid(), signal.SIGTERM)
    if evaluating and run.eval_step != state["step"]:  # always eval the final weights
        run.last_eval = _run_eval(run)
        logger.log({"step": state["step"], **run.last_eval})
    logger.close()


def _one_step(run: Run, step: int) -> dict:
    """One optimizer step: rows (sampled by online objectives), forward/backward over the
    micro-batches, clip, schedule, update. Returns the step's log record."""
    cfg, d, state, objective, sampler = run.cfg, run.d, run.state, run.objective, run.sampler
    rows = run.data.train.rows
    take = lambda: [rows[j] for j in sampler.next_step()]  # noqa: E731
    # Online RL objectives sample completions for the step's rows here, in the training
    # precision (bf16 frozen weights need autocast; sampled log-probs match training's).
    with run.autocast():
        step_rows = objective.rollout(take, step)
    batches, n_local = step_batches(objective, step_rows, cfg, run.pad_id, d.device)
    n_global, tokens = d.all_sum(n_local.clone()).clamp(min=1).unbind()
    loss, metrics = forward_backward(run.module, batches, n_global, cfg, d)
    if objective.share_prefix:
        metrics["shared_frac"] = _shared_fraction(batches, d)
    params = [p for p in objective.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm or math.inf))
    warmup = warmup_steps(cfg.train, run.total_steps)
    factor = lr_factor(step, run.total_steps, warmup, cfg.train.schedule, cfg.train.min_lr_ratio)
    lr = set_lr(run.optimizer, cfg.train.lr, factor)
    if math.isfinite(loss) and math.isfinite(grad_norm):
        run.optimizer.step()
    else:
        _handle_nonfinite(cfg, state, step, loss, grad_norm, run.log)
    run.optimizer.zero_grad(set_to_none=True)
    state["step"] = step + 1
    state["tokens"] += int(tokens.item())
    return {
        "step": step + 1,
        "epoch": round(sampler.epoch + sampler.step_in_epoch / sampler.steps_per_epoch, 4),
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": state["tokens"],
        "nan_skips": state["nan_skips"],
        **metrics,
        **objective.step_metrics,
    }


def forward_backward(module, batches: list[dict], n_global, cfg: Config, d) -> tuple:
    """Accumulate gradients of one optimizer step; returns its loss per unit (target token,
    pair or example) and the objective's metrics averaged the same way."""
    sums = LossSums(d.device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = module.no_sync() if (d.mode == "ddp" and not last) else contextlib.nullcontext()
        with sync, autocast(cfg.train.precision, d.device):
            out = module(**batch)
            # Gradients are averaged over ranks by DDP/FSDP, hence the x world.
            (out["loss_sum"] * (d.world / n_global)).backward()
        sums.add(out)
    return sums.reduce(d, n_global)


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


def _finish(run: Run) -> Path:
    """final/ (and final-merged/ when asked), the loss plot and report.md."""
    cfg, objective, method = run.cfg, run.objective, run.cfg.method
    full = artifacts.full_state_dict(objective)  # a collective: every rank takes part
    extra = {
        name: artifacts.full_state_dict(objective, prefix)
        for name, prefix in objective.extra_artifacts().items()
    }
    final_dir = run.run_dir / "final"
    if not run.d.is_main:
        return final_dir
    # extra files (PPO's value head) go in before the rename: final/ appears complete or not at all
    artifacts.save_final(
        run.model, full, run.tokenizer, final_dir, method.is_adapter, run.model_dir, extra
    )
    merge_err = None
    if cfg.train.save_merged and method.is_adapter:
        merge_err = _save_merged(run, final_dir)
    artifacts.plot_losses(run.run_dir)
    summary = {
        "stage": cfg.stage,
        "method": method.name,
        "model": cfg.model.name,
        "steps": run.state["step"],
        "target tokens trained": run.state["tokens"],
        "non-finite steps skipped": run.state["nan_skips"],
        "final": str(final_dir),
    }
    if merge_err is not None:
        summary["merge: max |logit diff| to the trained model"] = f"{merge_err:.2e}"
    if run.last_eval:
        summary.update({k: round(v, 4) for k, v in run.last_eval.items()})
    artifacts.write_report(run.run_dir, summary)
    return final_dir


def _save_merged(run: Run, final_dir: Path) -> float | None:
    """final-merged/: the adapter folded into the base; the max |logit diff| to the trained
    model where the merge is not exact by construction (QLoRA's dequantised base)."""
    cfg, merge_err = run.cfg, None
    transform = TRANSFORMS[cfg.method.name]
    if transform.merge is not None:  # e.g. QLoRA: into the dequantised base
        merged_src, merge_err = transform.merge(
            run.model_dir, cfg.model.dtype, final_dir, cfg.method, cfg.model.attn
        )
        print(f"merged: max |logit diff| to the trained model {merge_err:.2e}")
    else:
        merged_src, _, _ = load_model(
            str(run.model_dir),
            cfg.model.dtype,
            adapter=str(final_dir),
            head=run.objective.model_head,
        )
    artifacts.save_merged(merged_src, run.tokenizer, run.run_dir / "final-merged")
    return merge_err
