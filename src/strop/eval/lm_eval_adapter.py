"""lm-evaluation-harness interop: evaluate any strop-loadable model with lm-eval.

Importing this module registers the model type ``strop`` with lm-eval (an ``lm_eval.api.model.LM``
subclass); it needs the optional extra (``pip install -e '.[lm-eval]'``). Any model ``strop eval``
takes works: a known name, a local HF dir, a .gguf file, with a PEFT / strop adapter on top.

    python -m strop.eval.lm_eval_adapter run --model strop \\
        --model_args model=smollm2-135m-instruct,adapter=runs/my-run/final --tasks <task>

(lm-eval's own CLI with this module imported first; ``lm_eval.simple_evaluate(model=StropLM(...))``
works from Python.) Requests are handled as lm-eval's ``hf`` model handles them, so scores agree
with ``--model hf`` on the same weights (tested on tiny-llama):
- ``loglikelihood``: trailing spaces of the context move to the continuation, context +
  continuation is encoded as one string (the tokenizer's special tokens unless the text starts
  with BOS) and split at the context's own length; an empty context becomes the BOS token (EOS
  when there is none). Scored by strop's shared-prompt scorer (``continuation_scores``).
- ``loglikelihood_rolling``: lm-eval's rolling windows of ``max_length`` tokens, summed.
- ``generate_until``: greedy (or sampled per ``gen_kwargs``) from the raw context, cut at the
  first ``until`` string, at most ``max_gen_toks`` (256) new tokens.
"""

from __future__ import annotations

import copy

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from strop.eval.loglik import continuation_scores
from strop.models.load import load_model


@register_model("strop")
class StropLM(LM):
    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        adapter: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 8,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        device: str | None = None,
        **_ignored,  # lm-eval passes e.g. max_batch_size; strop batches by batch_size only
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, _ = load_model(model, dtype, adapter)
        if not device or (device.startswith("cuda") and not torch.cuda.is_available()):
            device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's CLI says cuda
        self.model = self.model.to(device).eval()
        self._device = torch.device(device)
        # "auto" (lm-eval's batch-size search) is not supported: fall back to 8
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(
            max_length or getattr(self.model.config, "max_position_embeddings", 2048)
        )
        self.add_bos_token = add_bos_token
        self.name = model if adapter is None else f"{model}+{adapter}"

    # -- tokens ---------------------------------------------------------------------------------

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = True if self.add_bos_token is None else self.add_bos_token
            bos = self.tokenizer.bos_token
            if bos and text.startswith(bos):  # the text already carries its BOS
                add_special_tokens = False
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx) :]

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """Cut the context from the left so context + continuation fit in ``max_length``."""
        cont = cont[-(self.max_length - 1) :] if len(cont) >= self.max_length else cont
        room = self.max_length - len(cont)
        return (ctx[-room:] if len(ctx) > room else ctx), cont

    # -- lm-eval's three request types ----------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._fit(*self.encode_pair(*req.args)) for req in requests]
        out = continuation_scores(self.model, pairs, self.batch_size, self.pad_id)
        for req, res in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            scores = continuation_scores(self.model, windows, self.batch_size, self.pad_id)
            total = sum(ll for ll, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self._generate_one(*req.args) for req in requests]

    def _generate_one(self, context: str, gen_kwargs: dict) -> str:
        kwargs = copy.deepcopy(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eos = (
            self.tokenizer.decode([self.tokenizer.eos_token_id])
            if self.tokenizer.eos_token_id is not None
            else None
        )
        if eos and eos not in until:
            until.append(eos)
        max_new = int(kwargs.pop("max_gen_toks", 256))
        temperature = float(kwargs.pop("temperature", 0.0))
        do_sample = bool(kwargs.pop("do_sample", temperature > 0)) and temperature > 0
        ids = self.tok_encode(context)[-(self.max_length - max_new) :]
        gen = {"max_new_tokens": max_new, "do_sample": do_sample, "pad_token_id": self.pad_id}
        if do_sample:
            gen["temperature"] = temperature
            gen.update({k: v for k, v in kwargs.items() if k in ("top_p", "top_k")})
        else:
            gen.update(temperature=None, top_p=None, top_k=None)
        if until:
            gen.update(stop_strings=until, tokenizer=self.tokenizer)
        with torch.inference_mode():
            x = torch.tensor([ids], device=self._device)
            seq = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), **gen)
        text = self.tokenizer.decode(seq[0, len(ids) :].tolist(), skip_special_tokens=True)
        for stop in until:  # cut at the first stop string, as lm-eval's hf model does
            text = text.split(stop)[0]
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return text

    # -- chat templates (lm-eval's --apply_chat_template) ---------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt=True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def main() -> None:
    """lm-eval's CLI with the ``strop`` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
