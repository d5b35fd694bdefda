"""DPO peak memory and step time: strop versus a naive resident-reference, full-logits loop.

Both sides train the same model on the same synthetic preference pairs (every chosen and every
rejected sequence exactly ``--seq-len`` tokens, rendered by strop's own preference data path),
one fresh subprocess per variant so each peak is its own. See docs/performance.md (DPO memory).

    .venv/bin/python benchmarks/dpo_memory.py     # smollm2-135m, 8 pairs x 2 x 512: naive-full,
                                                  # strop-full, strop-full-gc
    .venv/bin/python benchmarks/dpo_memory.py --pairs 2 --variants naive-lora,strop-lora
    .venv/bin/python benchmarks/dpo_memory.py --model tiny-llama --pairs 2 --seq-len 128 --steps 1

Variants:
  naive-full / naive-lora   AutoModelForCausalLM policy + a second, frozen, resident reference
                            model; ``model(ids, attention_mask).logits.log_softmax(-1)`` gathered
                            at the targets for policy and reference; chosen and rejected stacked
                            in one [2P, T] batch; torch AdamW (LoRA: peft, r 16, all-linear).
  strop-full / strop-lora   strop's DPO objective driven through strop.train.loop's own helpers
                            (setup.load_model_and_data, Objective.prepare, loop.step_batches,
                            loop.forward_backward),
                            reference: precompute (no reference model kept), log-probs through
                            the LM head at target positions only, chunked.
  strop-full-model          the same with reference: model (a frozen reference stays resident).
  strop-full-gc             strop-full with train.gradient_checkpointing (a config knob).
  strop-lora-adapter_off    LoRA with reference: adapter_off (the policy with adapters disabled).

Results: a table on stdout, benchmarks/results/dpo_memory-<device>[-<sizes>].json and a bar
chart next to it (.png).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path

from throughput_common import run_worker  # the script's folder is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IGNORE = -100
LN2 = math.log(2.0)
BETA = 0.1

# name: (system, method, reference mode, gradient checkpointing)
VARIANTS = {
    "naive-full": ("naive", "full", "resident model", False),
    "strop-full": ("strop", "full", "precompute", False),
    "strop-full-model": ("strop", "full", "model", False),
    "strop-full-gc": ("strop", "full", "precompute", True),
    "naive-lora": ("naive", "lora", "resident model", False),
    "strop-lora": ("strop", "lora", "precompute", False),
    "strop-lora-adapter_off": ("strop", "lora", "adapter_off", False),
}
DEFAULT_VARIANTS = "naive-full,strop-full,strop-full-gc"
# Gradients compared elementwise at step 0 (first elements of: layer 0, the final norm).
GRAD_PROBES = (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.norm.weight",
)
PROBE_ELEMENTS = 128  # the first elements of each probe (kept in the JSON)
_TEXT = (
    "the of and to in is was for on that with as by at from his her they this which be an it "
    "river mountain city garden winter summer light music letter window market island forest "
    "bridge village story question answer reason number paper silver orange yellow quiet rapid "
    "gentle ancient modern simple careful bright early later always never often today evening "
    "morning travel build write carry follow notice change gather measure explain remember"
)
WORDS = _TEXT.split(" ")


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_now_mib() -> float | None:
    return _status_mib("VmRSS")


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so later phases get their own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def live_tensor_bytes() -> int:
    """Bytes of every distinct storage behind a live tensor (parameters, buffers, optimizer
    state, ...), found by walking the garbage collector's objects."""
    import torch

    seen: dict[int, int] = {}
    with warnings_off():
        for o in gc.get_objects():
            if isinstance(o, torch.Tensor) and o.device.type != "meta":
                s = o.untyped_storage()
                seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def make_tracker():
    """A TorchDispatchMode that follows tensor memory allocated while it is active: every op
    output whose storage is new (not one of the op's inputs: views and in-place results are
    not allocations) is counted until the storage is freed. torch's CPU allocator keeps no
    statistics, so this is the tensor-level peak; RSS adds the allocator's and Python's own."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Tracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}
            self.cur = self.peak = 0

        def _free(self, key: int, n: int) -> None:
            if self.live.pop(key, None) is not None:
                self.cur -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {
                a.untyped_storage().data_ptr()
                for a in tree_flatten((args, kwargs))[0]
                if isinstance(a, torch.Tensor)
            }
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                s = t.untyped_storage()
                key = s.data_ptr()
                if key and key not in inputs and key not in self.live:
                    n = s.nbytes()
                    self.live[key] = n
                    self.cur += n
                    weakref.finalize(s, self._free, key, n)
                    self.peak = max(self.peak, self.cur)
            return out

    return Tracker()


def tensor_mib(tensors) -> float:
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values()) / 2**20


def optimizer_state_mib(opt) -> float:
    import torch

    return tensor_mib(
        v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )


# --------------------------------------------------------------------------------------------
# Data: synthetic pairs, every sequence exactly seq_len tokens after strop's rendering
# --------------------------------------------------------------------------------------------


def write_pairs(path: Path, tokenizer, n: int, seq_len: int, seed: int) -> dict:
    """``n`` preference pairs: a prompt of ~seq_len/4 tokens, responses long enough that
    truncation (right) cuts every rendered sequence to exactly ``seq_len`` tokens."""
    rng = random.Random(seed)
    probe = " ".join(rng.choice(WORDS) for _ in range(400))
    per_word = len(tokenizer(probe, add_special_tokens=False)["input_ids"]) / 400
    prompt_words = max(1, round(seq_len / 4 / per_word))
    response_words = math.ceil(seq_len * 1.25 / per_word)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    with open(path, "w") as f:
        for _ in range(n):
            row = {
                "prompt": [{"role": "user", "content": text(prompt_words)}],
                "chosen": text(response_words),
                "rejected": text(response_words),
            }
            f.write(json.dumps(row) + "\n")
    return {"prompt_words": prompt_words, "response_words": response_words}


def strop_config(args, method: str, reference: str, grad_ckpt: bool, out_dir: str):
    from strop.config import load_config

    m = {"name": method}
    if method == "lora":
        m.update({"r": 16, "alpha": 32, "targets": "all-linear"})
    dpo = {"beta": BETA, "loss": "sigmoid"}
    if reference in ("precompute", "model", "adapter_off"):
        dpo["reference"] = reference
    raw = {
        "model": {"name": args.model},
        "stage": "dpo",
        "method": m,
        "data": {
            "train": args.data,
            "eval": None,
            "max_length": args.seq_len,
            "truncation": "right",
        },
        "train": {
            "output_dir": out_dir,
            "max_steps": args.warmup + args.steps,
            "batch_size": args.pairs,
            "grad_accum": 1,
            "lr": lr_of(method),
            "weight_decay": 0.0,
            "schedule": "constant",
            "warmup": 0,
            "max_grad_norm": 1.0,
            "precision": args.precision,
            "gradient_checkpointing": grad_ckpt,
            "loss_chunk": args.loss_chunk,
            "progress": False,
            "tensorboard": False,
            "save_every": 0,
            "eval_every": 0,
            "log_every": 1,
            "seed": args.seed,
            "resume": "never",
        },
        "dpo": dpo,
    }
    return load_config(None, raw=raw)


def lr_of(method: str) -> float:
    return 5e-7 if method == "full" else 5e-6


def load_rows(args, tokenizer):
    """The pair rows exactly as strop's DPO data path renders them (both systems use them)."""
    from strop.data.dataset import build_datasets

    cfg = strop_config(args, "full", "precompute", False, "unused")
    rows = build_datasets(cfg.data, "dpo", tokenizer, args.seed).train.rows
    bad = [r.doc_lens for r in rows if r.doc_lens != [args.seq_len, args.seq_len]]
    if bad:
        raise SystemExit(f"synthetic pairs are not {args.seq_len} tokens each: {bad[:3]}")
    return rows


def step_indices(n_rows: int, args) -> list[list[int]]:
    """Row indices per step, the loop's own sampler (both systems see the same pairs)."""
    from strop.data.batching import ShardedSampler

    sampler = ShardedSampler(n_rows, args.pairs, args.seed)
    return [sampler.next_step() for _ in range(args.warmup + args.steps)]


def _g9(x: float) -> float:
    """9 significant digits: every float32 value round-trips, the JSON stays small."""
    return float(f"{x:.9g}")


def grad_record(named_params) -> dict:
    """Step-0 gradients in little space, for comparing two variants (also across invocations
    with --append): every parameter's gradient norm, in sorted-name order with a digest of the
    names, and the first elements of a few gradients."""
    norms, probes = {}, {}
    for name, p in named_params:
        if p.grad is None:
            continue
        g = p.grad.detach().double()
        norms[name] = _g9(float(g.norm()))
        if name in GRAD_PROBES:
            probes[name] = [_g9(x) for x in g.flatten()[:PROBE_ELEMENTS].tolist()]
    return compact_grads({"norms": norms, "probes": probes})


def compact_grads(rec: dict) -> dict:
    names = sorted(rec["norms"])
    return {
        "names_sha1": hashlib.sha1("\n".join(names).encode()).hexdigest(),
        "norms": [rec["norms"][k] for k in names],
        "probes": rec["probes"],
    }


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class Phases:
    """Current RSS at named points of a worker's life."""

    def __init__(self, device):
        self.device = device
        self.rss: dict[str, float | None] = {"imports": rss_now_mib()}

    def mark(self, name: str) -> None:
        self.rss[name] = rss_now_mib()


def _timed_loop(args, device, step_fn, optimizer):
    """Warmup + timed steps. Step 0 (untimed warmup) runs under the tensor tracker up to its
    backward; the steady-state tensor peak is then the live tensors at its start + the
    tracker's peak through forward and backward + the optimizer state that step 0 creates
    (lazily, after backward, when the activations are already freed)."""
    import torch

    total = args.warmup + args.steps
    times, losses, grad_norms = [], [], []
    hwm_reset = reset_hwm()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    track = device.type == "cpu" and not args.no_track and args.warmup > 0
    res: dict = {}
    for i in range(total):
        tracker = make_tracker() if (track and i == 0) else None
        base = 0
        if tracker is not None:
            gc.collect()
            base = live_tensor_bytes()
            tracker.__enter__()

        def after_backward(tracker=tracker, base=base):
            if tracker is not None:
                tracker.__exit__(None, None, None)
                res["fwd_bwd_tensor_peak_mib"] = tracker.peak / 2**20
                res["tensor_baseline_step0_mib"] = base / 2**20

        _sync(device)
        t0 = time.perf_counter()
        loss, gn = step_fn(i, after_backward)
        _sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        grad_norms.append(gn)
        print(f"  step {i}: {times[-1]:.2f} s, loss {loss:.6f}", file=sys.stderr, flush=True)
    opt_mib = optimizer_state_mib(optimizer)
    res.update(
        {
            "step_seconds": times,
            "losses": losses,
            "grad_norms": grad_norms,
            "peak_rss_mib": peak_rss_mib(),
            "steps_peak_rss_mib": _status_mib("VmHWM") if hwm_reset else None,
            "optimizer_state_mib": opt_mib,
        }
    )
    if device.type == "cuda":
        res["peak_tensor_mib"] = torch.cuda.max_memory_allocated() / 2**20
    elif "fwd_bwd_tensor_peak_mib" in res:
        res["tensor_baseline_mib"] = res["tensor_baseline_step0_mib"] + opt_mib
        res["peak_tensor_mib"] = res["tensor_baseline_mib"] + res["fwd_bwd_tensor_peak_mib"]
    return res


def step_batches(objective, rows, indices, cfg, pad_id, device):
    """strop.train.loop.step_batches for the rows of one step."""
    from strop.train.loop import step_batches as loop_step_batches

    return loop_step_batches(objective, [rows[j] for j in indices], cfg, pad_id, device)


def run_strop(args, method: str, reference: str, grad_ckpt: bool):
    import torch

    from strop.data.render import IGNORE as _IGNORE
    from strop.models.transforms import TRANSFORMS
    from strop.train import distributed
    from strop.train.loop import forward_backward
    from strop.train.objectives import OBJECTIVES, Setting
    from strop.train.optim import build_optimizer, set_lr
    from strop.train.setup import autocast, load_model_and_data

    assert _IGNORE == IGNORE
    tmp = tempfile.mkdtemp(prefix="strop-dpo-bench-")
    cfg = strop_config(args, method, reference, grad_ckpt, tmp)
    d = distributed.setup("none")
    phases = Phases(d.device)

    def quiet(*a, **k):
        return None

    model, tok, _, data = load_model_and_data(cfg, d, Path(tmp), quiet)
    transform = TRANSFORMS[cfg.method.name]
    lr_mult = transform.lr_multipliers(model, cfg.method) if transform.lr_multipliers else {}
    rows = data.train.rows
    if [r.doc_lens for r in rows] != [[args.seq_len] * 2] * len(rows):
        raise SystemExit("strop rendered rows of unexpected lengths")
    phases.mark("model_loaded")
    objective = OBJECTIVES["dpo"].from_config(model, cfg)
    t0 = time.perf_counter()
    splits = [s.rows for s in (data.train, data.eval) if s]
    precision = lambda: autocast(cfg.train.precision, d.device)  # noqa: E731
    objective.prepare(Setting(cfg, d.device, tok.pad_token_id, True, precision, quiet, splits))
    _sync(d.device)
    precompute_s = time.perf_counter() - t0 if reference == "precompute" else None
    module = distributed.wrap(objective, d)
    optimizer = build_optimizer(objective, cfg.train, lr_mult)
    params = [p for p in objective.parameters() if p.requires_grad]
    phases.mark("setup")
    setup_peak = peak_rss_mib()
    plan = step_indices(len(rows), args)
    module.train()
    grads: dict = {}

    def step(i: int, after_backward):
        batches, n_local = step_batches(objective, rows, plan[i], cfg, tok.pad_token_id, d.device)
        n_global, _ = d.all_sum(n_local.clone()).clamp(min=1).unbind()
        loss, _metrics = forward_backward(module, batches, n_global, cfg, d)
        after_backward()
        if i == 0:
            grads.update(grad_record(model.named_parameters()))
        gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm))
        set_lr(optimizer, cfg.train.lr, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss, gn

    res = _timed_loop(args, d.device, step, optimizer)
    shutil.rmtree(tmp, ignore_errors=True)
    res["step0_grads"] = grads
    ref = objective._reference[0] if objective._reference else None
    res.update(
        {
            "precompute_seconds": precompute_s,
            "setup_peak_rss_mib": setup_peak,
            "rss_phases_mib": phases.rss,
            "params_mib": tensor_mib(model.parameters()),
            "reference_params_mib": tensor_mib(ref.parameters()) if ref is not None else 0.0,
            "trainable_params": sum(p.numel() for p in params),
            "target_tokens_per_step": sum(
                sum(1 for y in r.labels[1:] if y != IGNORE) for r in (rows[j] for j in plan[0])
            ),
        }
    )
    return res


def naive_logps(model, ids, mask, labels):
    """Sum of log p(target) per sequence: full logits, log_softmax, gather (what users write)."""
    logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)  # [B, T, V]
    tgt = labels[:, 1:]
    keep = tgt != IGNORE
    lp = logp[:, :-1].gather(2, tgt.clamp(min=0)[..., None]).squeeze(-1)
    return (lp * keep).sum(-1)


def naive_batch(rows, seq_len: int):
    """[2P, T]: the P chosen sequences, then the P rejected ones."""
    import torch

    chosen = [(r.input_ids[:seq_len], r.labels[:seq_len]) for r in rows]
    rejected = [(r.input_ids[seq_len:], r.labels[seq_len:]) for r in rows]
    seqs = chosen + rejected
    ids = torch.tensor([s[0] for s in seqs])
    labels = torch.tensor([s[1] for s in seqs])
    labels[:, 0] = IGNORE  # the first token is never predicted (strop masks it too)
    return ids, torch.ones_like(ids), labels


def run_naive(args, method: str):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from strop.hub import resolve_model
    from strop.models.load import load_tokenizer
    from strop.quiet import quiet_transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    phases = Phases(device)
    quiet_transformers()
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    rows = load_rows(args, tok)
    torch.manual_seed(args.seed)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    ref.eval().requires_grad_(False)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        policy = get_peft_model(policy, lcfg)
    phases.mark("model_loaded")
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr_of(method), weight_decay=0.0)
    phases.mark("setup")
    setup_peak = peak_rss_mib()
    plan = step_indices(len(rows), args)
    grads: dict = {}
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if args.precision == "bf16"
        else contextlib.nullcontext
    )

    def step(i: int, after_backward):
        ids, mask, labels = (
            t.to(device) for t in naive_batch([rows[j] for j in plan[i]], args.seq_len)
        )
        p = len(plan[i])
        with autocast():
            pol = naive_logps(policy, ids, mask, labels)
            with torch.no_grad():
                refl = naive_logps(ref, ids, mask, labels)
            z = (pol[:p] - refl[:p]) - (pol[p:] - refl[p:])
            loss = -F.logsigmoid(BETA * z).mean()
        loss.backward()
        after_backward()
        if i == 0:
            base = policy.get_base_model() if method == "lora" else policy
            grads.update(grad_record(base.named_parameters()))
        gn = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item(), gn

    res = _timed_loop(args, device, step, opt)
    res["step0_grads"] = grads
    res.update(
        {
            "precompute_seconds": None,
            "setup_peak_rss_mib": setup_peak,
            "rss_phases_mib": phases.rss,
            "params_mib": tensor_mib(policy.parameters()),
            "reference_params_mib": tensor_mib(ref.parameters()),
            "trainable_params": sum(p.numel() for p in params),
            "target_tokens_per_step": sum(
                sum(1 for y in r.labels[1:] if y != IGNORE) for r in (rows[j] for j in plan[0])
            ),
        }
    )
    return res


def worker(args) -> None:
    import torch

    # On a shared machine, let the kernel's OOM killer pick this worker before anyone else.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    system, method, reference, grad_ckpt = VARIANTS[args.worker]
    if system == "strop":
        res = run_strop(args, method, reference, grad_ckpt)
    else:
        res = run_naive(args, method)
    res["threads"] = torch.get_num_threads()
    res["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    Path(args.worker_out).write_text(json.dumps(res))


# --------------------------------------------------------------------------------------------
# Parent: data, subprocesses, checks, table, JSON, chart
# --------------------------------------------------------------------------------------------


def _spawn(args, variant: str) -> dict:
    flags = {
        "--data": args.data,
        "--model": args.model,
        "--pairs": args.pairs,
        "--seq-len": args.seq_len,
        "--steps": args.steps,
        "--warmup": args.warmup,
        "--precision": args.precision,
        "--loss-chunk": args.loss_chunk,
        "--seed": args.seed,
        "--threads": args.threads,
        "--no-track": args.no_track,
    }
    return run_worker(__file__, variant, flags, show_stderr=True)


def _compare_grads(a: dict, b: dict) -> dict | None:
    """Step-0 gradients of two variants: the worst relative difference of per-parameter
    gradient norms, and the relative L2 error of the probe slices."""
    import torch

    if a["names_sha1"] != b["names_sha1"]:  # other parameter names (peft vs strop LoRA)
        return None
    norm_err = max(abs(x - y) / max(y, 1e-30) for x, y in zip(a["norms"], b["norms"], strict=True))
    probe_err = {}
    for k in GRAD_PROBES:
        if k in a["probes"] and k in b["probes"]:
            x, y = torch.tensor(a["probes"][k]), torch.tensor(b["probes"][k])
            probe_err[k] = float((x - y).norm() / y.norm().clamp(min=1e-30))
    return {
        "parameters_compared": len(a["norms"]),
        "max_rel_err_of_param_grad_norms": norm_err,
        "rel_l2_err_probe_grads": probe_err,
    }


def _checks(results: dict) -> tuple[dict, list[str]]:
    """Honesty checks. Step 0 is the initial policy against itself, so every variant's loss
    is ln 2; strop and naive must agree on it and, for full fine-tuning, on the gradient (the
    LoRA inits differ between peft and strop, so only the loss is compared there)."""
    checks: dict[str, object] = {}
    failures: list[str] = []
    for v, r in results.items():
        if "losses" in r:
            err = abs(r["losses"][0] - LN2)
            checks[f"{v}: |loss0 - ln 2|"] = err
            if err > 1e-4:
                failures.append(f"{v}: step-0 loss {r['losses'][0]} is not ln 2")
    for v, a in results.items():
        base = f"naive-{VARIANTS[v][1]}"
        b = results.get(base, {})
        if v == base or "losses" not in a or "losses" not in b:
            continue
        diff = abs(a["losses"][0] - b["losses"][0])
        checks[f"{v} vs {base}: |loss0 diff|"] = diff
        if diff > 1e-4:
            failures.append(f"{v} and {base} disagree on the step-0 loss by {diff}")
        gn_a, gn_b = a["grad_norms"][0], b["grad_norms"][0]
        checks[f"{v} vs {base}: step-0 grad norms"] = [gn_a, gn_b]
        if abs(gn_a - gn_b) > 1e-3 * gn_b:
            failures.append(f"{v} and {base} step-0 gradient norms differ: {gn_a} vs {gn_b}")
        if VARIANTS[v][1] == "full":
            cmp = _compare_grads(a["step0_grads"], b["step0_grads"])
            if cmp:
                checks[f"{v} vs {base}: step-0 gradients"] = cmp
                errs = [
                    cmp["max_rel_err_of_param_grad_norms"],
                    *cmp["rel_l2_err_probe_grads"].values(),
                ]
                if max(errs) > 1e-3:
                    failures.append(f"{v} and {base} step-0 gradients differ: {cmp}")
    return checks, failures


def _verdicts(results: dict) -> dict:
    """The issue's goal for every strop variant against the naive loop of its method: peak
    memory <= 60% of naive at no worse step time. strop-full (the defaults) is the headline;
    the others show what a config choice changes."""
    verdicts = {}
    for v, s in results.items():
        n = results.get(f"naive-{VARIANTS[v][1]}", {})
        if not v.startswith("strop") or "peak_rss_mib" not in s or "peak_rss_mib" not in n:
            continue
        mem = s["peak_rss_mib"] / n["peak_rss_mib"]
        t = s["s_per_step"] / n["s_per_step"]
        met = mem <= 0.60 and t <= 1.0
        verdicts[v] = {"peak_rss_ratio": mem, "step_time_ratio": t, "goal_met": met}
        if s.get("peak_tensor_mib") and n.get("peak_tensor_mib"):
            verdicts[v]["peak_tensor_ratio"] = s["peak_tensor_mib"] / n["peak_tensor_mib"]
        line = (
            f"goal ({v} vs naive-{VARIANTS[v][1]}): peak RSS {mem:.0%} of naive (goal <= 60%), "
            f"step time {t:.2f}x (goal <= 1x): {'MET' if met else 'NOT met'}"
        )
        if "peak_tensor_ratio" in verdicts[v]:
            line += f"; peak tensor memory {verdicts[v]['peak_tensor_ratio']:.0%}"
        print(line)
    return verdicts


def _dump(report: dict) -> str:
    """The report as indented JSON, each variant's step-0 gradient record on one line."""
    grads, results = {}, {}
    for k, v in report["results"].items():
        if "step0_grads" in v:
            grads[k] = v["step0_grads"]
            v = {**v, "step0_grads": f"@@grads:{k}@@"}
        results[k] = v
    text = json.dumps({**report, "results": results}, indent=2)
    for k, g in grads.items():
        text = text.replace(json.dumps(f"@@grads:{k}@@"), json.dumps(g, separators=(",", ":")))
    return text


def _timed_mean(r: dict) -> float:
    t = r["step_seconds"][r["warmup"] :]
    return sum(t) / len(t)


def _fmt(x, spec: str = ",.0f") -> str:
    return "" if x is None else format(x, spec)


def _print_table(results: dict, args) -> list[list[str]]:
    headers = [
        "variant",
        "reference",
        "steps w+t",
        "s/step",
        "tok/s",
        "precompute s",
        "peak RSS MiB",
        "steps peak RSS MiB",
        "peak tensor MiB",
        "tensor baseline MiB",
        "RSS vs naive",
        "time vs naive",
        "loss step0→last",
    ]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, r["error"][:100]] + [""] * (len(headers) - 2))
            continue
        naive = results.get(f"naive-{VARIANTS[name][1]}", {})
        ok = "peak_rss_mib" in naive
        rows.append(
            [
                name,
                VARIANTS[name][2],
                f"{r['warmup']}+{r['timed_steps']}",
                f"{r['s_per_step']:.2f}",
                f"{r['tokens_per_s']:.0f}",
                _fmt(r.get("precompute_seconds"), ".0f"),
                _fmt(r["peak_rss_mib"]),
                _fmt(r.get("steps_peak_rss_mib")),
                _fmt(r.get("peak_tensor_mib")),
                _fmt(r.get("tensor_baseline_mib")),
                f"{r['peak_rss_mib'] / naive['peak_rss_mib']:.0%}" if ok else "",
                f"{r['s_per_step'] / naive['s_per_step']:.2f}x" if ok else "",
                f"{r['losses'][0]:.6f}→{r['losses'][-1]:.6f}",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for i, row in enumerate([headers, *rows]):
        print(
            "  ".join(
                str(x).ljust(w) if j < 2 else str(x).rjust(w)
                for j, (x, w) in enumerate(zip(row, widths, strict=False))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return [headers, *rows]


def _chart(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if "peak_rss_mib" in r]
    colors = ["#999999" if n.startswith("naive") else "#4c72b0" for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(names))
    rss = [results[n]["peak_rss_mib"] / 1024 for n in names]
    bars = ax1.bar([i - 0.2 for i in x], rss, width=0.4, color=colors, label="peak RSS")
    ax1.bar_label(bars, labels=[f"{v:.1f}" for v in rss], fontsize=7)
    ten = [(results[n].get("peak_tensor_mib") or 0) / 1024 for n in names]
    if any(ten):
        bars = ax1.bar(
            [i + 0.2 for i in x],
            ten,
            width=0.4,
            color=colors,
            alpha=0.45,
            hatch="//",
            label="peak tensor memory",
        )
        ax1.bar_label(bars, labels=[f"{v:.1f}" for v in ten], fontsize=7)
        base = [(results[n].get("tensor_baseline_mib") or 0) / 1024 for n in names]
        ax1.scatter(
            [i + 0.2 for i in x],
            base,
            marker="_",
            s=300,
            color="black",
            label="model + optimizer (+ reference)",
            zorder=3,
        )
    if "naive-full" in names:  # the goal: <= 60% of the naive loop's peak
        goal = 0.6 * results["naive-full"]["peak_rss_mib"] / 1024
        ax1.axhline(goal, color="#c44e52", ls="--", lw=1, label="60% of naive-full peak RSS")
    ax1.set_xticks(list(x), names, rotation=25, ha="right", fontsize=8)
    ax1.set_ylabel("GiB (lower is better)")
    ax1.set_ylim(0, max(rss) * 1.45)  # room for the legend above the bars
    ax1.legend(fontsize=7, ncol=2, loc="upper right")
    ax1.set_title("peak memory", fontsize=9)
    secs = [results[n]["s_per_step"] for n in names]
    bars = ax2.bar(list(x), secs, color=colors)
    ax2.bar_label(bars, labels=[f"{v:.1f}" for v in secs], fontsize=7)
    ax2.set_xticks(list(x), names, rotation=25, ha="right", fontsize=8)
    ax2.set_ylabel("seconds per step (lower is better)")
    ax2.set_title("step time", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=8, help="preference pairs per step (batch)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per chosen/rejected sequence")
    p.add_argument("--steps", type=int, default=2, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--loss-chunk", type=int, default=1024, help="strop train.loss_chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-track", action="store_true", help="skip the tensor-memory step (CPU)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the other variants already in the JSON of the same setup (run variants in "
        "separate invocations, one table)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import torch

    from strop.hub import resolve_model
    from strop.models.load import load_tokenizer

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = args.threads or torch.get_num_threads()
    tokens = 2 * args.pairs * args.seq_len
    print(
        f"model {args.model}, {args.precision}, {args.pairs} pairs x 2 x {args.seq_len} tokens "
        f"= {tokens} tokens/step, {args.warmup} warmup + {args.steps} timed steps, {threads} "
        f"torch threads on {os.cpu_count()} CPUs, device {device}"
    )
    default_sizes = (args.model, args.pairs, args.seq_len) == ("smollm2-135m-instruct", 8, 512)
    suffix = "" if default_sizes else f"-{args.model}-p{args.pairs}-l{args.seq_len}"
    out = Path(args.out) if args.out else RESULTS / f"dpo_memory-{device}{suffix}.json"
    setup = {
        "model": args.model,
        "precision": args.precision,
        "pairs": args.pairs,
        "seq_len": args.seq_len,
        "loss_chunk": args.loss_chunk,
        "seed": args.seed,
    }
    results: dict[str, dict] = {}
    if args.append and out.exists():
        prev = json.loads(out.read_text())
        if {k: prev.get(k) for k in setup} == setup:
            results = {k: v for k, v in prev["results"].items() if k not in variants}
            print(f"appending to {out}: keeping {', '.join(results) or 'nothing'}")
        else:
            print(f"--append: {out} has another setup; starting afresh")
    tmp = Path(tempfile.mkdtemp(prefix="dpo-memory-"))
    args.data = str(tmp / "pairs.jsonl")
    gen = write_pairs(
        Path(args.data),
        load_tokenizer(resolve_model(args.model)),
        args.pairs,
        args.seq_len,
        args.seed,
    )
    for v in variants:
        print(f"running {v} ...", flush=True)
        r = _spawn(args, v)
        if "error" not in r:
            r["warmup"] = args.warmup
            r["timed_steps"] = args.steps
            r["s_per_step"] = _timed_mean(r)
            r["tokens_per_s"] = tokens / r["s_per_step"]
            r["run_time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        else:
            print(f"  {v} failed: {r['error']}")
        results[v] = r
    shutil.rmtree(tmp, ignore_errors=True)
    results = {k: results[k] for k in VARIANTS if k in results}  # a stable order
    checks, failures = _checks(results)
    print()
    table = _print_table(results, args)
    print()
    for k, v in checks.items():
        print(f"check {k}: {v}")
    verdicts = _verdicts(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **setup,
        "tokens_per_step": tokens,
        "beta": BETA,
        "data": gen,
        "threads": threads,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "device": device,
        "checks": checks,
        "check_failures": failures,
        "goal": verdicts,
        "table": table,
        "results": results,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.write_text(_dump(report))
    png = out.with_suffix(".png")
    _chart(
        results,
        png,
        f"DPO, {args.model} {args.precision}, {args.pairs} pairs x {args.seq_len} tokens, {device}",
    )
    print(f"wrote {out} and {png}")
    for f in failures:
        print(f"CHECK FAILED: {f}")
    return 1 if failures or any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
