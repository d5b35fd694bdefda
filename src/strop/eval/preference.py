"""The ``preference`` eval task: how strongly a model prefers the chosen answer of held-out
pairs. Per pair: margin = log p(chosen | prompt) - log p(rejected | prompt) (summed over
response tokens, the quantity DPO moves), the same per response token, and whether the margin
is positive. Scored by the training objectives' own log-prob path (strop.models.logps),
one model call per batch of pairs.
"""

from __future__ import annotations

import torch

from strop.data.batching import collate
from strop.data.pairs import preference_rows
from strop.errors import StropError
from strop.eval.config import PreferenceTask
from strop.eval.scores import MetricScores, TaskOutput
from strop.models.logps import per_document, row_token_counts, target_documents, target_logps


def run_preference(model, tokenizer, task: PreferenceTask, examples: list, seed: int) -> TaskOutput:
    rows, stats = preference_rows(tokenizer, examples, task.max_length)
    if not rows:
        raise StropError(f"task {task.name!r}: no pair left to score ({stats.describe()})")
    device = next(model.parameters()).device
    margins, per_token = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(rows), task.batch_size):
                part = rows[s : s + task.batch_size]
                batch = collate(part, tokenizer.pad_token_id, with_docs=True)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                lp, _ = target_logps(model, batch, 1024)
                pair = per_document(lp.double(), target_documents(batch), len(part))
                counts = row_token_counts(batch).to(pair.device)
                margins += (pair[:, 0] - pair[:, 1]).tolist()
                avg = pair / counts
                per_token += (avg[:, 0] - avg[:, 1]).tolist()
    finally:
        model.train(was_training)
    return TaskOutput(
        {
            "accuracy": MetricScores([float(m > 0) for m in margins]),
            "margin": MetricScores(margins),
            "margin_per_token": MetricScores(per_token),
        }
    )
