"""Rollout engine shared by the online RL stages (grpo, ppo): batched sampling with a KV cache.

What it does that plain ``model.generate(num_return_sequences=G)`` does not:
- each prompt is prefilled **once**, then its KV cache is repeated for the G completions of
  its group (generate expands the inputs first and prefills every copy);
- the LM head runs on the last position only during prefill;
- finished completions leave the batch: their rows are dropped from the KV cache, so late
  decode steps compute only the completions still running;
- the log-prob of every sampled token, log softmax(logits / T)[token], is returned with it
  (T = 1 when greedy): the "old policy" log-probs of PPO/GRPO come for free;
- keys and values go into buffers reserved for the whole rollout, and Llama-family models
  decode through a lean step with fused projections (strop.models.fast_decode); tokens are
  drawn by inverse CDF, one uniform number per row (``sample_tokens``).
Sampling draws from its own ``torch.Generator``: the trainer's global RNG is untouched, and a
rollout is reproducible from (weights, prompts, seed).

The policy samples with the weights it trains (same module, eval mode): never stale weights.
Under bf16/fp16 autocast, fp32 linear weights (notably an LM head tied to the input embeddings,
which autocast would cast again at every decode step, and LoRA adapters) are cast once per
rollout instead (``weights_cast_once``); the values are the same, the per-step casts go.
An external engine (vLLM) would plug in behind ``sample`` with weights synced each step; it is
not implemented here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from strop.data.batching import Row
from strop.models.fast_decode import decode_plan, reserved_cache
from strop.models.logps import target_logps


@dataclass
class Rollout:
    """Completions in group order: prompt i's G completions are rows i*G .. i*G+G-1."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # the stop token, when one was sampled, included
    logps: list[list[float]]  # per completion token, log softmax(logits / T)[token]
    finished: list[bool]  # ended with a stop token (else cut at max_new_tokens)
    stats: dict = field(default_factory=dict)


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    u: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B], log-probs [B] under softmax(logits / T)) from logits [B, V] (fp32).
    top_p restricts the draw to the smallest set of tokens holding top_p of the mass; the
    returned log-prob is still that of the full tempered distribution (what training
    recomputes).

    The draw is by inverse CDF: one uniform number per row, located in the row's cumulative
    probabilities (float64, so every token keeps an interval of its own probability's width).
    ``torch.multinomial`` draws an exponential variate per *vocabulary entry* (49,152 of them
    per row for SmolLM2): on CPU that alone cost a third of a decode step. ``u`` [B, 1]
    (float64 in [0, 1)) gives the rows' uniform numbers instead of ``generator``."""
    z = logits if temperature in (0, 1) else logits / temperature
    lse = z.logsumexp(-1, keepdim=True)
    if temperature == 0:
        tokens = z.argmax(-1)
    else:
        probs = (z - lse).exp_()
        order = None
        if top_p < 1.0:
            probs, order = probs.sort(-1, descending=True)
            outside = probs.cumsum(-1) - probs > top_p  # mass before this token > top_p
            probs = probs.masked_fill_(outside, 0.0)
        cdf = probs.cumsum(-1, dtype=torch.float64)
        if u is None:
            u = torch.rand(len(z), 1, generator=generator, dtype=torch.float64, device=z.device)
        # the first index whose cumulative mass exceeds u * total: P(index k) = p_k / total
        idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=z.shape[-1] - 1)
        tokens = (idx if order is None else order.gather(1, idx))[:, 0]
    return tokens, (z.gather(1, tokens[:, None]) - lse)[:, 0]


def step_dtype(model) -> torch.dtype:
    """What a decode step computes in: the autocast dtype when autocast is on, else the
    model's (its input embeddings')."""
    device = next(model.parameters()).device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return model.get_input_embeddings().weight.dtype


def prefill(model, ids, mask, positions, cache) -> torch.Tensor:
    """Run left-padded prompts through the model into ``cache``; the logits of each row's
    last position [B, V] (fp32), the LM head applied there only."""
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float()


@contextmanager
def weights_cast_once(model: nn.Module, device_type: str):
    """Under autocast to a lower precision: for the duration, every nn.Linear with an fp32
    weight holds a copy cast to that precision. Autocast would cast frozen weights again at every
    call (it caches casts only of leaf weights that require grad; for SmolLM2 the tied 49,152 x
    576 LM head: 113 MB read and 57 MB written per decode step), and the fused LoRA forward casts
    its adapters per call. Results are bitwise those of the per-call casts. Outside autocast
    nothing changes. Sampling only: the copies are not parameters anything trains."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    dtype = torch.get_autocast_dtype(device_type)
    swapped = []
    for module in model.modules():
        w = getattr(module, "weight", None)
        if (
            isinstance(module, nn.Linear)
            and type(w) is nn.Parameter  # not bitsandbytes' packed Params4bit / Int8Params
            and w.dtype == torch.float32
        ):
            swapped.append((module, w))
            module.weight = nn.Parameter(w.detach().to(dtype), requires_grad=False)
    try:
        yield
    finally:
        for module, w in swapped:  # the very Parameter objects back: ties and optimizer intact
            module.weight = w


def sample(
    model,
    prompts: list[list[int]],
    group_size: int,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> Rollout:
    """``group_size`` completions for every prompt (token ids, no padding). ``on_step(t)`` is
    called after decode step t (1-based): progress for long batches."""
    with weights_cast_once(model, next(model.parameters()).device.type):
        return _sample(
            model,
            prompts,
            group_size,
            max_new_tokens,
            stop_ids,
            pad_id,
            temperature,
            top_p,
            seed,
            on_step,
        )


@torch.no_grad()
def _sample(
    model,
    prompts,
    group_size,
    max_new_tokens,
    stop_ids,
    pad_id,
    temperature,
    top_p,
    seed,
    on_step=None,
) -> Rollout:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(seed)
    ids, mask = left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = reserved_cache(model, ids.shape[1] + max_new_tokens)
    plan = decode_plan(model, cache, step_dtype(model))
    logits = prefill(model, ids, mask, positions, cache)
    # One prefill per prompt; the group's completions share it.
    cache.batch_repeat_interleave(group_size)
    logits = logits.repeat_interleave(group_size, 0)
    mask = mask.repeat_interleave(group_size, 0)
    next_pos = positions[:, -1].repeat_interleave(group_size, 0) + 1
    n = len(prompts) * group_size
    active = torch.arange(n, device=device)  # which completions the batch rows are
    tokens_out = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logps_out = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    prefill_s, steps = time.perf_counter() - t0, 0
    for t in range(max_new_tokens):
        tok, lp = sample_tokens(logits, temperature, top_p, gen)
        tokens_out[active, t], logps_out[active, t] = tok, lp
        lengths[active] = t + 1
        done = torch.isin(tok, stops)
        finished[active] = done
        steps += 1
        if on_step is not None:
            on_step(t + 1)
        if t + 1 == max_new_tokens or bool(done.all()):
            break
        if bool(done.any()):  # finished completions leave the batch and the cache
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            active, tok, mask, next_pos = active[keep], tok[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], 1)
        if plan is not None:
            logits = plan.step(tok, next_pos, mask, cache)
        else:
            out = model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    model.train(was_training)
    lengths_l, toks, lps = lengths.tolist(), tokens_out.tolist(), logps_out.tolist()
    return Rollout(
        prompt_ids=[list(p) for p in prompts for _ in range(group_size)],
        completion_ids=[toks[i][: lengths_l[i]] for i in range(n)],
        logps=[lps[i][: lengths_l[i]] for i in range(n)],
        finished=finished.tolist(),
        stats={
            "fast_decode": plan is not None,
            "seconds": time.perf_counter() - t0,
            "prefill_seconds": prefill_s,
            "decode_steps": steps,
            "new_tokens": int(lengths.sum()),
        },
    )


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """Several rollouts as one (group order kept; times and token counts summed, flags
    true when true for every part)."""
    if len(parts) == 1:
        return parts[0]
    stats = {
        k: all(p.stats.get(k) for p in parts)
        if isinstance(v, bool)
        else sum(p.stats.get(k, 0) for p in parts)
        for k, v in parts[0].stats.items()
    }
    return Rollout(
        [x for p in parts for x in p.prompt_ids],
        [x for p in parts for x in p.completion_ids],
        [x for p in parts for x in p.logps],
        [x for p in parts for x in p.finished],
        stats,
    )


@dataclass
class RolloutRow(Row):
    """A sampled completion as a training row: prompt + completion, targets on the completion;
    ``values["adv"]`` its advantage; per completion token the sampler's and the reference's
    log-probs."""

    old_logps: list[float] = field(default_factory=list)
    ref_logps: list[float] = field(default_factory=list)


def completion_logps(
    model: nn.Module, batch: dict, chunk: int, temperature: float, return_hidden: bool = False
):
    """log softmax(logits / T)[token] at every target position [N] (T = 1 when greedy), with
    the LM head applied at target positions only, chunked (strop.models.logps).
    ``return_hidden``: also the final hidden states there [N, d] (what a value head reads:
    the state *before* each completion token, whose logits predict it)."""
    logps, h = target_logps(model, batch, chunk, temperature)
    return (logps, h) if return_hidden else logps


def padded(values: torch.Tensor, docs: torch.Tensor, n_rows: int):
    """Flat per-token values [N] (rows in order) -> ([n_rows, T], mask [n_rows, T])."""
    counts = torch.bincount(docs, minlength=n_rows)
    pos = torch.arange(len(docs), device=docs.device) - (counts.cumsum(0) - counts)[docs]
    width = max(int(counts.max()), 1) if len(docs) else 1
    out = values.new_zeros(n_rows, width).index_put((docs, pos), values)
    mask = values.new_zeros(n_rows, width).index_put((docs, pos), torch.ones_like(values))
    return out, mask
