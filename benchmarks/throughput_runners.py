"""The systems the throughput benchmark runs: a plain transformers + peft loop, strop's loop,
and TRL's SFTTrainer (when installed). Each returns a result record (throughput_common)."""

from __future__ import annotations

import tempfile
import time

from throughput_common import DATA, IGNORE, _result, doc_stats, model_shape, peak_rss_mib


def _strop_cfg(args, method: str, out_dir: str, steps: int, share_prefix: bool = False):
    from strop.config import load_config

    m = {"name": method}
    if method == "lora":
        m.update({"r": 16, "alpha": 32, "targets": "all-linear"})
    raw = {
        "model": {"name": args.model},
        "method": m,
        "data": {
            "train": str(DATA),
            "eval": None,
            "max_length": args.max_length,
            "packing": True,
            "share_prefix": share_prefix,
            "mask": "assistant",
        },
        "train": {
            "output_dir": out_dir,
            "max_steps": steps,
            "batch_size": args.batch_size,
            "grad_accum": 1,
            "lr": 1e-5 if method == "full" else 2e-4,
            "precision": args.precision,
            "progress": False,
            "tensorboard": False,
            "save_every": 0,
            "eval_every": 0,
            "log_every": 1,
            "seed": args.seed,
            "resume": "never",
        },
    }
    return load_config(None, raw=raw)


def _samples(args):
    """The rendered samples (identical for every system) and the tokenizer."""
    from strop.data.dataset import build_datasets
    from strop.hub import resolve_model
    from strop.models.load import load_tokenizer

    cfg = _strop_cfg(args, "lora", "unused", 1)
    tok = load_tokenizer(resolve_model(args.model))
    data = build_datasets(cfg.data, "sft", tok, args.seed)
    return data.train.samples, tok


def _plain_batches(samples, args):
    """Batches of ``batch_size`` samples in a seeded shuffled order (wrapping around)."""
    import torch

    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(args.seed))
    order = order.tolist()
    total = args.warmup + args.steps
    need = total * args.batch_size
    idx = [order[i % len(order)] for i in range(need)]
    return [
        [samples[j] for j in idx[s * args.batch_size : (s + 1) * args.batch_size]]
        for s in range(total)
    ]


def _collate_padded(batch, pad_id: int):
    """Right-pad to the longest sample in the batch; labels -100 on prompt and padding."""
    import torch

    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(batch):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(s.labels)
    return ids, mask, labels


def run_plain(args, method: str) -> dict:
    """What a typical user writes: HF model (+ peft LoRA), padded batches, .loss, AdamW."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from strop.hub import resolve_model
    from strop.quiet import quiet_transformers

    samples, tok = _samples(args)
    quiet_transformers()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    shape = model_shape(args.model)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5 if method == "full" else 2e-4)
    times, stats, losses = [], [], []
    for batch in _plain_batches(samples, args):
        t0 = time.perf_counter()
        ids, mask, labels = _collate_padded(batch, tok.pad_token_id)
        bf16 = args.precision == "bf16"
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        s = doc_stats([(x.input_ids, x.labels) for x in batch])
        s["slots"] = ids.numel()
        stats.append(s)
    return _result(args, method, shape, times, stats, losses, timing="per-step perf_counter")


def run_strop(args, method: str, share_prefix: bool = False) -> dict:
    """strop.train.loop.train with packing and the default objective (``share_prefix``: with
    data.share_prefix, the common system prompt of a micro-batch's documents computed once).

    Timing: with train.log_every=1 the loop stores target_tokens_per_s in every history record,
    measured with perf_counter between consecutive steps, so each step's wall time is exactly
    (target tokens of the step) / target_tokens_per_s. The first ``warmup`` steps are dropped.
    Model load, data rendering and the final save happen outside those intervals."""
    from strop.data.batching import ShardedSampler, collate, documents
    from strop.data.dataset import build_datasets
    from strop.hub import resolve_model
    from strop.models.load import load_tokenizer
    from strop.train.loop import train

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="strop-bench-") as tmp:
        cfg = _strop_cfg(args, method, tmp, total, share_prefix)
        result = train(cfg)
    hist = result.history
    rss = peak_rss_mib()
    deltas = [
        b["tokens"] - a for a, b in zip([0] + [h["tokens"] for h in hist], hist, strict=False)
    ]
    times = [n / rec["target_tokens_per_s"] for n, rec in zip(deltas, hist, strict=True)]
    losses = [rec["loss"] for rec in hist]
    # Replay the loop's sampler over the same packed rows to count real tokens per step.
    tok = load_tokenizer(resolve_model(args.model))
    rows = build_datasets(cfg.data, "sft", tok, cfg.train.seed).train.rows
    sampler = ShardedSampler(len(rows), cfg.train.batch_size, cfg.train.seed)
    stats = []
    for n_targets in deltas:
        step_rows = [rows[j] for j in sampler.next_step()]
        docs = documents(step_rows)
        s = doc_stats(docs)
        # The token slots strop's own collate builds (rows laid end to end under the default
        # per-document attention: no padding; a shared prefix once).
        batch = collate(step_rows, tok.pad_token_id, share_prefix=share_prefix)
        s["slots"] = batch["input_ids"].numel()
        s["docs"] = len(docs)
        s["target_mismatch"] = s["targets"] != n_targets
        stats.append(s)
    res = _result(args, method, model_shape(args.model), times, stats, losses, "loop history")
    res["peak_rss_mib"] = rss
    return res


def run_trl(args, method: str) -> dict:
    """TRL SFTTrainer on the same pre-tokenised samples (completion mask = strop's labels)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from strop.hub import resolve_model
    from strop.quiet import quiet_transformers

    samples, tok = _samples(args)
    batches = _plain_batches(samples, args)
    flat = [s for b in batches for s in b]
    ds = Dataset.from_list(
        [
            {
                "input_ids": s.input_ids,
                "completion_mask": [int(y != IGNORE) for y in s.labels],
            }
            for s in flat
        ]
    )
    quiet_transformers()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    shape = model_shape(args.model)
    peft_config = None
    if method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            stamps.append(time.perf_counter())

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as tmp:
        conf = SFTConfig(
            output_dir=tmp,
            max_steps=total,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            learning_rate=1e-5 if method == "full" else 2e-4,
            max_length=args.max_length,
            packing=False,
            completion_only_loss=True,
            bf16=args.precision == "bf16",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=args.seed,
            data_seed=args.seed,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=conf,
            train_dataset=ds,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[Stamp()],
        )
        trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # The trainer shuffles; step contents are approximated by the same-sized batches in order.
    stats = [doc_stats([(x.input_ids, x.labels) for x in b]) for b in batches]
    for s, b in zip(stats, batches, strict=False):
        s["slots"] = len(b) * max(len(x.input_ids) for x in b)
    return _result(args, method, shape, times, stats, losses, timing="TrainerCallback stamps")
