"""Log-likelihood of continuations: the scorer of multiple_choice, classification (loglik),
judge verdicts and the lm-eval adapter.

A continuation's score is the sum of log p(token | everything before it) over its tokens,
given a context; ``split_ids`` cuts context and continuation the way lm-eval does, so scores
match its ``loglikelihood`` requests. Pairs that share a context are scored together, the
context encoded once.
"""

from __future__ import annotations

import torch


def split_ids(tokenizer, context: str, cont: str, chat: bool = False) -> tuple[list, list]:
    """(context ids, continuation ids): encode context+continuation as one string and split at
    the length of the context's own encoding (lm-eval's rule), so the continuation is scored
    exactly as the model would see it in running text. If a token merges across the boundary
    (the whole encoding does not start with the context's), the two are encoded separately."""
    special = not chat  # a rendered chat template already holds its BOS
    ctx = tokenizer(context, add_special_tokens=special)["input_ids"]
    whole = tokenizer(context + cont, add_special_tokens=special)["input_ids"]
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    return ctx, tokenizer(cont, add_special_tokens=False)["input_ids"]


def render_context(tokenizer, prompt: str, chat: bool) -> str:
    if not chat:
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


# -- scoring -----------------------------------------------------------------------------------


def continuation_logprobs(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8, pad_id: int = 0
) -> list[float]:
    """Sum of log p(continuation token | everything before it) for each (ctx, cont) id pair
    (``continuation_scores`` without the greedy flags)."""
    return [ll for ll, _ in continuation_scores(model, pairs, batch_size, pad_id)]


def continuation_scores(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8, pad_id: int = 0
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation token | everything before it), whether every continuation
    token is the argmax) for each (ctx, cont) id pair.

    Pairs that share a context (the choices of one question, the labels of one text) are
    scored together so the context is encoded once (``_score_packed``): one forward of the
    contexts, whose last position predicts every continuation's first token, then one of the
    continuations' remaining tokens on the contexts' KV cache. ``batch_size`` counts distinct
    contexts per forward. Same definition, same numbers (to fp32 rounding) as
    ``per_choice_logprobs``, one forward per pair; soft-prompt
    adapters (prefix / prompt / p-tuning) use that path, as they own the KV cache and mask.
    """
    if any(not cont for _, cont in pairs):  # nothing to predict: log 1 = 0, trivially greedy
        scored = [i for i, (_, cont) in enumerate(pairs) if cont]
        out = [(0.0, True)] * len(pairs)
        lls = continuation_scores(model, [pairs[i] for i in scored], batch_size, pad_id)
        for i, ll in zip(scored, lls, strict=True):
            out[i] = ll
        return out
    if _prompt_learning(model):
        return _per_choice_scores(model, pairs, batch_size, pad_id)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(pairs):
        groups.setdefault(tuple(ctx), []).append(i)
    # Similar lengths share a batch (less padding); scores go back by index, so the order of
    # the rows changes nothing but fp32 rounding.
    items = sorted(groups.items(), key=lambda kv: len(kv[0]) + sum(len(pairs[i][1]) for i in kv[1]))
    out = [(0.0, False)] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                rows = [_pack(list(ctx), [pairs[i][1] for i in idx]) for ctx, idx in chunk]
                for (_, idx), scores in zip(chunk, _score_packed(model, rows, pad_id), strict=True):
                    for i, ll in zip(idx, scores, strict=True):
                        out[i] = ll
    finally:
        model.train(was_training)
    return out


def _prompt_learning(model) -> bool:
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def _pack(ctx: list[int], conts: list[list[int]]) -> dict:
    """One row: the context's ids, then each continuation's tail (its tokens but the last) with
    its positions (continuing the context's) and segment (i + 1 for continuation i); per
    continuation the (row position read, target token) of each of its tokens."""
    n = len(ctx)
    ids, pos, seg = list(ctx), list(range(n)), [0] * n
    targets = []
    for i, cont in enumerate(conts):
        at = len(ids)  # where this continuation's tail starts in the row
        targets.append([(n - 1, cont[0])] + [(at + j, t) for j, t in enumerate(cont[1:])])
        ids += cont[:-1]
        pos += range(n, n + len(cont) - 1)
        seg += [i + 1] * (len(cont) - 1)
    return {"ids": ids, "pos": pos, "seg": seg, "n": n, "targets": targets}


def _score_packed(model, rows: list[dict], pad_id: int) -> list[list[tuple[float, bool]]]:
    """Two forwards. (1) The contexts, right-padded (a plain padding mask, none at all without
    padding, so SDPA keeps its fused causal kernel), logits only at each context's last position
    (which predicts every continuation's first token), keeping the KV cache when some
    continuation has more tokens. (2) All tails of a row after its cached context, each tail
    attending to the context and causally to itself only: a small [tails, context + tails]
    mask, never one over the whole context."""
    device = next(model.parameters()).device
    b, n = len(rows), [r["n"] for r in rows]
    width = max(n)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    real = torch.zeros((b, width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : n[i]] = torch.tensor(r["ids"][: n[i]])
        real[i, : n[i]] = True
    tails = [len(r["ids"]) - r["n"] for r in rows]
    kwargs = {} if bool(real.all()) else {"attention_mask": real.long().to(device)}
    last = sorted(set(k - 1 for k in n))
    keep = torch.tensor(last, dtype=torch.long, device=device)
    first = model(input_ids=ids.to(device), logits_to_keep=keep, use_cache=max(tails) > 0, **kwargs)
    logp = {"ctx": torch.log_softmax(first.logits.float(), dim=-1)}  # [B, len(last), V]
    if max(tails) > 0:
        logp["tail"] = _score_tails(model, rows, real, first.past_key_values, pad_id)
    col = {p: j for j, p in enumerate(last)}
    out = []
    for i, r in enumerate(rows):
        scores = []
        for t in r["targets"]:
            rows_lp = [
                logp["ctx"][i, col[p]] if p == n[i] - 1 else logp["tail"][i, p - n[i]] for p, _ in t
            ]
            lp = torch.stack(rows_lp)  # [tokens, V]
            tgt = torch.tensor([tok for _, tok in t], device=lp.device)
            greedy = bool((lp.argmax(-1) == tgt).all())
            scores.append((float(lp.gather(1, tgt[:, None]).sum()), greedy))
        out.append(scores)
    return out


def _score_tails(model, rows: list[dict], real: torch.Tensor, cache, pad_id: int):
    """Log-probs [B, T, V] at every tail position, the contexts coming from ``cache``."""
    device = next(model.parameters()).device
    b, width = real.shape
    tw = max(len(r["ids"]) - r["n"] for r in rows)
    ids = torch.full((b, tw), pad_id, dtype=torch.long)
    pos = torch.zeros((b, tw), dtype=torch.long)
    seg = torch.full((b, tw), -1, dtype=torch.long)  # -1 marks padding
    for i, r in enumerate(rows):
        k = len(r["ids"]) - r["n"]
        ids[i, :k], pos[i, :k], seg[i, :k] = (
            torch.tensor(r[x][r["n"] :]) for x in ("ids", "pos", "seg")
        )
    causal = torch.ones(tw, tw, dtype=torch.bool).tril()
    own = (seg[:, :, None] == seg[:, None, :]) & causal | torch.eye(tw, dtype=torch.bool)
    mask = torch.cat([real[:, None, :].expand(b, tw, width), own], dim=-1)[:, None]
    logits = model(
        input_ids=ids.to(device),
        position_ids=pos.to(device),
        attention_mask=mask.to(device),
        past_key_values=cache,
    ).logits
    return torch.log_softmax(logits.float(), dim=-1)


def per_choice_logprobs(
    model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8, pad_id: int = 0
) -> list[float]:
    """The same scores with one (right-padded) row per pair: every choice re-encodes the
    context. Kept for soft-prompt adapters and as the baseline of benchmarks/mc_scoring.py."""
    return [ll for ll, _ in _per_choice_scores(model, pairs, batch_size, pad_id)]


def _per_choice_scores(model, pairs, batch_size: int, pad_id: int) -> list[tuple[float, bool]]:
    device = next(model.parameters()).device
    out: list[tuple[float, bool]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                seqs = [c + t for c, t in chunk]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for row, s in enumerate(seqs):
                    ids[row, : len(s)] = torch.tensor(s)
                    mask[row, : len(s)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                for row, (ctx, cont) in enumerate(chunk):
                    pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=device)
                    tgt = torch.tensor(cont, device=device)
                    greedy = bool((logp[row, pos].argmax(-1) == tgt).all())
                    out.append((float(logp[row, pos, tgt].sum()), greedy))
    finally:
        model.train(was_training)
    return out
