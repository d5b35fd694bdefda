"""Batched text generation for chat models (plain HF models and PEFT-wrapped ones).

Prompts are rendered with the tokenizer's chat template, sorted by length so each batch pads
little, left-padded (decoder-only models continue from the last position, so padding must sit
on the left), generated with the KV cache and returned in the caller's order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from strop.engine import Engine, Request
from strop.errors import StropError
from strop.models.prompt_learning import active_config
from strop.progress import Progress
from strop.rollout import sample

# End-of-turn markers of common chat templates: a model may emit one of these rather than the
# tokenizer's eos (e.g. Llama-3 models end turns with <|eot_id|> but declare <|end_of_text|>).
END_OF_TURN_TOKENS = (
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "</s>",
)


WEIGHTS = ("auto", "exact")


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 => greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    batch_size: int = 8
    seed: int = 0
    # "auto": on an x86 CPU decoding in fp32, the decode step reads fp16 copies of the weights
    # (about 2x faster; greedy replies measured in docs/performance.md "Generation");
    # "exact": the model's own weights
    weights: str = "auto"


def render_prompt(tokenizer, prompt: str | list[dict], system: str | None = None) -> str:
    """Apply the chat template, ending with the assistant header so the model answers next."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    if not getattr(tokenizer, "chat_template", None):
        raise StropError(
            f"tokenizer of {tokenizer.name_or_path!r} has no chat_template; "
            "use a chat/instruct model"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end a reply: the configured eos plus any known end-of-turn token."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(i) for i in eos)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


def check_params(params: GenerationParams) -> None:
    if params.max_new_tokens < 1:
        raise StropError(f"max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.batch_size < 1:
        raise StropError(f"batch_size must be >= 1, got {params.batch_size}")
    if not params.temperature >= 0 or math.isinf(params.temperature):  # nan fails >= too
        raise StropError(f"temperature must be a finite number >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise StropError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.weights not in WEIGHTS:
        raise StropError(f"weights must be one of {', '.join(WEIGHTS)}, got {params.weights!r}")


class _StopStrings:
    """Stopping criterion: a row is done once its generated text holds a stop string.

    Only the last few tokens are decoded per step: a stop string of n characters spans at most
    4n tokens (a byte-level tokenizer may spend one token per UTF-8 byte), so the check stays
    cheap.
    """

    def __init__(self, tokenizer, stops: list[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.window = 4 * max(len(s) for s in stops) + 4

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        tails = input_ids[:, self.prompt_len :][:, -self.window :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _generation_kwargs(model, tokenizer, params: GenerationParams) -> dict:
    from transformers import GenerationConfig

    pad = tokenizer.pad_token_id
    eos = stop_token_ids(model, tokenizer)
    if pad is None:
        pad = eos[0] if eos else 0
    # A fresh config so a model's own sampling defaults never leak into greedy decoding.
    cfg = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=params.temperature > 0,
        eos_token_id=eos or None,
        pad_token_id=pad,
        use_cache=True,
    )
    if params.temperature > 0:
        cfg.temperature, cfg.top_p, cfg.top_k = params.temperature, params.top_p, 0
    return {"generation_config": cfg}


def _cut(ids: list[int], stop_ids: set[int]) -> tuple[list[int], int]:
    """Drop everything from the first stop token on; also return how many tokens were made."""
    for i, tok in enumerate(ids):
        if tok in stop_ids:
            return ids[:i], i + 1
    return ids, len(ids)


def _truncate_at_stops(text: str, stops: list[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


@contextlib.contextmanager
def _left_padding(tokenizer) -> Iterator[None]:
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = old


def _batches(
    order: list[int], size: int, progress: bool | str
) -> Iterator[tuple[list[int], Progress]]:
    """The prompts' batches and the progress they report to, on stderr when asked
    (``progress`` a label, or True): a bar on a terminal, a plain line every 10 s elsewhere
    (strop.progress), also from inside a long batch (its decode step)."""
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    label = progress if isinstance(progress, str) else "generating"
    with Progress(len(order), label, "prompts", enabled=bool(progress)) as bar:
        for chunk in chunks:
            yield chunk, bar
            bar.advance(len(chunk))


def _engine_serves(model, params: GenerationParams) -> bool:
    """strop's rollout engine (strop.rollout.sample) generates unless stop strings need a
    text check at every step, or the model is a prompt-learning adapter (its virtual tokens
    come with peft's own generate)."""

    return not params.stop and active_config(model) is None


def generate(
    model,
    tokenizer,
    prompts: list[str | list[dict]],
    params: GenerationParams,
    system: str | None = None,
    progress: bool | str = False,
    stats: dict | None = None,
) -> list[str]:
    """Complete every prompt; returns texts in input order. ``stats`` (if given) receives
    ``new_tokens``, the number of tokens generated in total.

    Llama-family models generate with continuous batching (strop.engine: ``batch_size`` rows
    decode at once and a finished row's slot goes to the next prompt; LoRA folded into the
    step's weights; sampled prompt i draws from its own generator seeded ``seed + i``). Other
    models go through strop's rollout engine in static batches (finished rows leave the batch),
    and stop strings or a prompt-learning adapter through transformers' ``generate``."""
    check_params(params)
    rendered = [render_prompt(tokenizer, p, system) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rendered]
    # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    kwargs = _generation_kwargs(model, tokenizer, params)
    # Rows that finish early are filled with pad, so pad ends a reply too.
    stop_ids = set(stop_token_ids(model, tokenizer)) | {kwargs["generation_config"].pad_token_id}
    pad = kwargs["generation_config"].pad_token_id
    if _engine_serves(model, params) and encoded:
        capacity = max(len(e) for e in encoded) + params.max_new_tokens
        slots = min(params.batch_size, len(encoded))
        fp16 = params.weights == "auto"
        engine = Engine.create(model, slots, capacity, sorted(stop_ids), fp16_weights=fp16)
        if engine is not None:
            return _generate_continuous(
                engine, tokenizer, encoded, order, params, pad, stop_ids, progress, stats
            )
    return _generate_static(
        model, tokenizer, encoded, order, params, kwargs, stop_ids, progress, stats
    )


def _generate_continuous(
    engine: Engine, tokenizer, encoded, order, params, pad, stop_ids, progress, stats
) -> list[str]:
    requests = {
        i: Request(
            encoded[i], params.max_new_tokens, params.temperature, params.top_p, params.seed + i
        )
        for i in order
    }
    label = progress if isinstance(progress, str) else "generating"
    with (
        Progress(len(order), label, "prompts", enabled=bool(progress)) as bar,
        torch.inference_mode(),
    ):
        engine.run(
            [requests[i] for i in order],
            pad,
            on_done=lambda r: bar.advance(1),
            on_step=lambda t: bar.heartbeat(f"decode step {t}"),
        )
    new_tokens, out = 0, [""] * len(encoded)
    for i, r in requests.items():
        ids, made = _cut(r.tokens, stop_ids)
        new_tokens += made
        out[i] = tokenizer.decode(ids, skip_special_tokens=True)
    if stats is not None:
        stats["new_tokens"] = new_tokens
    return out


def _generate_static(
    model, tokenizer, encoded, order, params, kwargs, stop_ids, progress, stats
) -> list[str]:
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    out: list[str] = [""] * len(encoded)
    new_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with _left_padding(tokenizer), torch.inference_mode(), _seeded(params.seed, device):
            engine = _engine_serves(model, params)
            pad = kwargs["generation_config"].pad_token_id
            n_batches = -(-len(order) // params.batch_size)
            for n, (chunk, bar) in enumerate(_batches(order, params.batch_size, progress)):
                where = f"batch {n + 1}/{n_batches}"
                if engine:  # seeded per batch: reproducible for a seed and a batch size
                    ro = sample(
                        model,
                        [encoded[i] for i in chunk],
                        1,
                        params.max_new_tokens,
                        sorted(stop_ids),
                        pad,
                        params.temperature,
                        params.top_p,
                        seed=params.seed + n,
                        on_step=lambda t, bar=bar, where=where: bar.heartbeat(
                            f"{where}: token {t}/{params.max_new_tokens}"
                        ),
                    )
                    rows = ro.completion_ids
                else:
                    batch = tokenizer.pad(
                        {"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt"
                    ).to(device)
                    prompt_len = batch["input_ids"].shape[1]
                    criteria = StoppingCriteriaList()
                    if params.stop:
                        criteria.append(_StopStrings(tokenizer, params.stop, prompt_len))
                    seqs = model.generate(**batch, **kwargs, stopping_criteria=criteria)
                    rows = seqs[:, prompt_len:].tolist()
                for i, row in zip(chunk, rows, strict=True):
                    ids, made = _cut(row, stop_ids)
                    new_tokens += made
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    out[i] = _truncate_at_stops(text, params.stop)
    finally:
        model.train(was_training)
    if stats is not None:
        stats["new_tokens"] = new_tokens
    return out


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed sampling once per call without disturbing the caller's global RNG state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
