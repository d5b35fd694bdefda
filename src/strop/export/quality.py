"""Quality after quantising: the quantised model against the unquantised one on held-out text.

Per token position of every sequence, both models' next-token distributions p (reference) and
q (quantised) are compared:
- perplexity of each, exp(mean NLL of the actual next token), and the relative change;
- mean KL(p || q) in nats: how far the quantised distribution moved, all tokens counted
  (llama.cpp's perplexity tool reports the same quantity against an f16 base);
- top-1 agreement: the share of positions whose argmax is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from strop.errors import StropError

MAX_SEQUENCES = 32
MAX_TOKENS = 512


@torch.no_grad()
def compare(reference, candidate, sequences: list[list[int]]) -> dict:
    """Metrics of ``candidate`` against ``reference`` (both causal LMs, fp32 logits) over
    ``sequences`` (token ids, each >= 2 tokens)."""
    nll_ref = nll_cand = kl = agree = 0.0
    n = 0
    for ids in sequences:
        x = torch.tensor([ids])
        lp = torch.log_softmax(reference(input_ids=x).logits[0, :-1].float(), -1)
        lq = torch.log_softmax(candidate(input_ids=x).logits[0, :-1].float(), -1)
        target = x[0, 1:, None]
        nll_ref -= float(lp.gather(1, target).sum())
        nll_cand -= float(lq.gather(1, target).sum())
        kl += float((lp.exp() * (lp - lq)).sum())
        agree += float((lp.argmax(-1) == lq.argmax(-1)).sum())
        n += len(ids) - 1
    if n == 0:
        raise StropError("no held-out tokens to measure quality on")
    ppl_ref, ppl_cand = (torch.tensor(v / n).exp().item() for v in (nll_ref, nll_cand))
    return {
        "positions": n,
        "ppl_reference": ppl_ref,
        "ppl": ppl_cand,
        "ppl_delta_rel": ppl_cand / ppl_ref - 1,
        "kl_mean": kl / n,
        "top1_agreement": agree / n,
    }


def held_out_sequences(path: Path, tokenizer) -> list[list[int]]:
    """Token ids of up to MAX_SEQUENCES rows of a JSONL file: ``messages`` rendered with the
    chat template, else ``prompt`` (+ ``completion``/``response``) or ``text``; each cut to
    MAX_TOKENS."""
    if not path.is_file():
        raise StropError(f"--data: {path} is not a file")
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if len(out) >= MAX_SEQUENCES:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StropError(f"{path}:{k}: not valid JSON ({exc.msg})") from None
        text = _text(row, tokenizer)
        if text is None:
            raise StropError(f"{path}:{k}: a row needs 'messages', 'prompt' or 'text'")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
        if len(ids) >= 2:
            out.append(ids)
    return out


def _text(row: dict, tokenizer) -> str | None:
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        return tokenizer.apply_chat_template(row["messages"], tokenize=False)
    if isinstance(row, dict) and isinstance(row.get("prompt"), str):
        reply = row.get("completion") or row.get("response") or ""
        return row["prompt"] + (reply if isinstance(reply, str) else "")
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return row["text"]
    return None
