"""Continuous batching: generation that keeps its rows full.

Why: on a CPU a decode step of SmolLM2-135M costs 65 ms for 1 row, 168 ms for 16, 416 ms for
64 (2-core AVX2, fp32; docs/performance.md "Generation"): the weights stream from memory once
per step whatever the rows, so rows are nearly free until compute catches up. Static batches
waste them: plain ``generate`` keeps computing rows that finished until the longest ends, and
strop's rollout engine drops them, so its batch shrinks. Here a finished row's slot goes at
once to the next waiting prompt: the prompt is prefilled alone (transformers' forward, the LM
head on its last position only), its keys and values are copied into the slot, and it joins
the next step. Rows have their own lengths and positions; a step attends over the longest,
masking each row's unused columns.

Sampling: every request draws from its own generator, seeded with its ``seed``: a sampled reply
depends on its prompt, seed and the weights, not on which prompts shared its steps or on the
concurrency. Greedy replies equal transformers' ``generate`` up to matmul round-off
(tests/unit/test_engine.py).

Only models the lean decode step reproduces (strop.models.fast_decode: the Llama family) are
served; ``Engine.create`` returns None for the rest, and callers keep static batches.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from strop.models.fast_decode import DecodePlan, decode_plan, reserved_cache
from strop.rollout import left_pad, prefill, sample_tokens, step_dtype

# Shorter shared prefixes are prefilled with each prompt: copying them saves too little.
MIN_SHARED_PREFIX = 8
# The slots' keys and values stay under this; an engine asked for more rows gets fewer.
KV_BUDGET_BYTES = 4 << 30


def kv_bytes_per_token(model, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes in every layer."""
    cfg = model.config
    size = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim(cfg) * size


def head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


@dataclass
class Request:
    """One prompt to complete; the engine fills ``tokens`` (the stop token, when one was
    sampled, included), ``logps`` (log softmax(logits / T)[token], T = 1 when greedy) and
    ``finished`` (ended with a stop token rather than at ``max_new_tokens``)."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    finished: bool = False
    generator: torch.Generator | None = field(default=None, repr=False)


class _SlotLayer:
    """One decoder layer's keys and values for every slot: [S, KV, C, hd]. The lean step's
    ``append`` writes each running row's new key at that row's own length."""

    def __init__(self, slots: SlotCache, k: torch.Tensor, v: torch.Tensor):
        self.slots, self.k_buf, self.v_buf = slots, k, v

    def append(self, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype):
        rows, at, width = self.slots.step_index()
        self.k_buf[rows, :, at] = k.to(self.k_buf.dtype)
        self.v_buf[rows, :, at] = v.to(self.v_buf.dtype)
        b = len(rows)
        return self.k_buf[:b, :, :width], self.v_buf[:b, :, :width]


class SlotCache:
    """Keys and values of ``slots`` rows, each of its own length; the first ``active`` slots
    are the running rows, in batch order."""

    reserved = True  # decode_plan's check: the layers take the lean step's append

    def __init__(self, model, slots: int, capacity: int, dtype: torch.dtype):
        cfg = model.config
        kv = cfg.num_key_value_heads
        hd = head_dim(cfg)
        device = next(model.parameters()).device
        shape = (slots, kv, capacity, hd)
        self.layers = [
            _SlotLayer(
                self,
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]
        self.capacity = capacity
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.active = 0

    def step_index(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(running rows, the column each writes, the width attended) of the step under way."""
        lengths = self.lengths[: self.active]
        return self._rows, lengths, self._width

    def begin_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [B], key mask [B, W]) of the next token of every running row."""
        lengths = self.lengths[: self.active]
        self._rows = torch.arange(self.active, device=lengths.device)
        self._width = int(lengths.max()) + 1
        cols = torch.arange(self._width, device=lengths.device)
        return lengths.clone(), cols[None, :] <= lengths[:, None]

    def end_step(self) -> None:
        self.lengths[: self.active] += 1

    def admit(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        widths: list[int],
        prefix: int = 0,
    ):
        """Prefilled rows into the next free slots: ``keys``/``values`` per layer
        [n, KV, prefix + W, hd]: the shared prefix's ``prefix`` columns, then the rows'
        own tokens left-padded, row j's ``widths[j]`` at the end."""
        w = keys[0].shape[2]
        for j, n in enumerate(widths):
            slot = self.active + j
            for layer, k, v in zip(self.layers, keys, values, strict=True):
                layer.k_buf[slot, :, :prefix] = k[j, :, :prefix]
                layer.v_buf[slot, :, :prefix] = v[j, :, :prefix]
                layer.k_buf[slot, :, prefix : prefix + n] = k[j, :, w - n :]
                layer.v_buf[slot, :, prefix : prefix + n] = v[j, :, w - n :]
            self.lengths[slot] = prefix + n
        self.active += len(widths)

    def move(self, src: int, dst: int) -> None:
        n = int(self.lengths[src])
        for layer in self.layers:
            layer.k_buf[dst, :, :n] = layer.k_buf[src, :, :n]
            layer.v_buf[dst, :, :n] = layer.v_buf[src, :, :n]
        self.lengths[dst] = n


@dataclass
class Engine:
    model: torch.nn.Module
    plan: DecodePlan
    cache: SlotCache
    stop_ids: torch.Tensor
    stats: dict = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        model,
        slots: int,
        capacity: int,
        stop_ids: list[int],
        fold_adapters: bool = True,
        fp16_weights: bool = False,
    ) -> Engine | None:
        """An engine of ``slots`` rows of up to ``capacity`` tokens (prompt + reply), or None
        when the model has no lean decode step. ``fold_adapters``: LoRA folded into the step's
        weight copies (decoding costs what the base model's does); ``fp16_weights``: the step
        reads fp16 copies of the weights where that is faster (strop.models.fast_decode)."""
        probe = reserved_cache(model, 1)
        if not getattr(probe, "reserved", False):  # sliding windows, linear attention, ...
            return None
        device = next(model.parameters()).device
        dtype = step_dtype(model)
        # fewer rows rather than a cache that does not fit (a 7B model's fp32 keys and values
        # take 256 KiB per token: 32 rows of 2,300 tokens would be 19 GiB)
        slots = max(1, min(slots, KV_BUDGET_BYTES // (capacity * kv_bytes_per_token(model, dtype))))
        cache = SlotCache(model, slots, capacity, dtype)
        plan = decode_plan(model, cache, dtype, fold_adapters, fp16_weights)
        if plan is None:
            return None
        stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
        return cls(model, plan, cache, stops)

    @torch.no_grad()
    def run(
        self,
        requests: list[Request],
        pad_id: int,
        on_done: Callable[[Request], None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        """Complete every request, admitting them in list order as slots free up.
        ``on_done(request)`` when one ends; ``on_step(t)`` after decode step t. A prefix every
        prompt shares (a system prompt: 90 of the quickstart's ~195 tokens) is prefilled once
        and its keys and values copied into each slot; only the rest of a prompt is
        prefilled with it."""
        t0 = time.perf_counter()
        cache, slots = self.cache, len(self.cache.lengths)
        for r in requests:
            if len(r.prompt) + r.max_new_tokens > cache.capacity:
                raise ValueError("a request is longer than the engine's capacity")
            r.generator = torch.Generator(device=self.stop_ids.device).manual_seed(r.seed)
        was_training = self.model.training
        self.model.eval()
        waiting, rows = deque(requests), []
        logits = None
        prefill_s, steps = 0.0, 0
        try:
            self._prefix = self._prefill_prefix(requests, pad_id)
            prefill_s = time.perf_counter() - t0
            while waiting or rows:
                if waiting and len(rows) < slots:
                    t_pre = time.perf_counter()
                    new = [waiting.popleft() for _ in range(min(slots - len(rows), len(waiting)))]
                    first = self._prefill(new, pad_id)
                    logits = first if logits is None else torch.cat([logits, first])
                    rows += new
                    prefill_s += time.perf_counter() - t_pre
                tok, done = self._sample(rows, logits)
                for i in sorted(done, reverse=True):  # the last running row fills the hole
                    if on_done is not None:
                        on_done(rows[i])
                    last = len(rows) - 1
                    if i != last:
                        cache.move(last, i)
                        rows[i] = rows[last]
                        tok[i] = tok[last]
                    rows.pop()
                    cache.active -= 1
                tok = tok[: len(rows)]
                if not rows:
                    logits = None
                    continue
                positions, mask = cache.begin_step()
                logits = self.plan.step(tok, positions, mask, cache)
                cache.end_step()
                steps += 1
                if on_step is not None:
                    on_step(steps)
        finally:
            self.model.train(was_training)
        self.stats = {
            "fast_decode": True,
            "seconds": time.perf_counter() - t0,
            "prefill_seconds": prefill_s,
            "decode_steps": steps,
            "new_tokens": sum(len(r.tokens) for r in requests),
            "shared_prefix_tokens": self._prefix[0] if self._prefix else 0,
        }

    def _prefill_prefix(self, requests: list[Request], pad_id: int):
        """(length, [(keys, values) per layer] [1, KV, length, hd]) of the longest prefix
        every prompt shares, leaving each prompt at least one token of its own (its last
        position gives its first logits); None when shorter than MIN_SHARED_PREFIX."""
        prompts = [r.prompt for r in requests]
        if len(prompts) < 2:
            return None
        n = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for p in prompts[1:]:
            n = next((i for i in range(n) if p[i] != first[i]), n)
        if n < MIN_SHARED_PREFIX:
            return None
        device = self.stop_ids.device
        ids = torch.tensor([first[:n]], device=device)
        cache = reserved_cache(self.model, n)
        self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return n, [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]

    def _prefill(self, new: list[Request], pad_id: int) -> torch.Tensor:
        """Run the new prompts (after the shared prefix) through the model, copy their keys
        and values into free slots; their first logits [n, V] (fp32)."""
        shared, prefix = self._prefix or (0, [])
        ids, mask = left_pad([r.prompt[shared:] for r in new], pad_id, self.stop_ids.device)
        positions = shared + (mask.cumsum(1) - 1).clamp(min=0)
        cache = reserved_cache(self.model, shared + ids.shape[1])
        for layer, (k, v) in zip(cache.layers, prefix, strict=False):
            layer.update(k.expand(len(new), -1, -1, -1), v.expand(len(new), -1, -1, -1))
        if shared:  # the prefix, then each row's own tokens after its left padding
            mask = torch.cat([mask.new_ones(len(new), shared), mask], 1)
        logits = prefill(self.model, ids, mask, positions, cache)
        self.cache.admit(
            [layer.keys for layer in cache.layers],
            [layer.values for layer in cache.layers],
            [len(r.prompt) - shared for r in new],
            shared,
        )
        return logits

    def _sample(self, rows: list[Request], logits: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Every running row's next token (each request's own temperature, top_p and
        generator); the indices of rows that have now ended."""
        tok = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        lp = torch.empty(len(rows), dtype=torch.float32, device=logits.device)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r.temperature, r.top_p), []).append(i)
        for (temperature, top_p), idx in groups.items():
            u = None
            if temperature > 0:
                u = torch.cat(
                    [
                        torch.rand(1, 1, generator=rows[i].generator, dtype=torch.float64)
                        for i in idx
                    ]
                ).to(logits.device)
            at = torch.tensor(idx, device=logits.device)
            tok[at], lp[at] = sample_tokens(logits[at], temperature, top_p, None, u)
        stop = torch.isin(tok, self.stop_ids).tolist()
        done = []
        for i, (r, t, p) in enumerate(zip(rows, tok.tolist(), lp.tolist(), strict=True)):
            r.tokens.append(t)
            r.logps.append(p)
            if stop[i] or len(r.tokens) >= r.max_new_tokens:
                r.finished = stop[i]
                done.append(i)
        return tok, done
