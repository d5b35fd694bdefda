"""The ``perplexity`` eval task: how well a model predicts held-out text.

Mean cross-entropy per target token (chat: the turns ``mask`` selects; text: every token),
perplexity = exp(that), and bits per byte = CE sum / ln 2 / UTF-8 bytes of the target text
(special tokens such as <|im_end|> add loss but no bytes), which compares models with
different tokenizers fairly. Scored by the training objectives' own loss path
(``strop.models.logps``), one example per forward so each keeps its own sums.
"""

from __future__ import annotations

import math

import torch

from strop.data.batching import collate, unpacked
from strop.data.records import Record
from strop.data.render import IGNORE, tokenize_records
from strop.errors import StropError
from strop.eval.config import PerplexityTask
from strop.eval.scores import MetricScores, TaskOutput
from strop.models.logps import target_nll_sum


def run_perplexity(
    model, tokenizer, task: PerplexityTask, examples: list[Record], seed: int
) -> TaskOutput:
    samples, _, _ = tokenize_records(
        tokenizer, examples, mask=task.mask, max_length=task.max_length, truncation="right"
    )
    if not samples:
        raise StropError(f"task {task.name!r}: no example has a target token to score")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss, tokens, nbytes = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for row in unpacked(samples):  # one example per forward: per-example sums
                batch = collate([row], pad)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss_sum, n_targets = target_nll_sum(model, batch, 1024)
                n = int(n_targets)
                target = [y for y in row.labels[1:] if y != IGNORE]
                text = tokenizer.decode(target, skip_special_tokens=True)
                loss.append(float(loss_sum) / n)
                tokens.append(float(n))
                nbytes.append(float(len(text.encode("utf-8"))))
    finally:
        model.train(was_training)
    # bits per byte per example = loss_sum / ln2 / bytes, weighted by bytes -> ratio of sums.
    bpb = [
        (ce * n / math.log(2) / b) if b else 0.0
        for ce, n, b in zip(loss, tokens, nbytes, strict=True)
    ]
    metrics = {
        "loss": MetricScores(loss, tokens),
        "ppl": MetricScores(loss, tokens, "exp"),
        "bits_per_byte": MetricScores(bpb, nbytes),
    }
    return TaskOutput(metrics)
