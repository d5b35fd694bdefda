"""GRPO rollouts and step time, side by side (docs/performance.md, "GRPO rollouts").

1. Generation throughput at the same prompts, group size and lengths: strop's rollout engine
   (strop.rollout.sample: one prefill per prompt shared by its group, finished rows leave
   the batch) vs plain ``model.generate(num_return_sequences=G, do_sample=True)``.
   ``fixed`` turns stop tokens off so both make exactly max_new_tokens per completion (same
   work); ``stops`` keeps the end-of-turn tokens (the real case: lengths vary).
2. The time split of full GRPO steps (LoRA) as the loop runs them: generation, rewards,
   reference log-probs, training (forward + backward + optimizer).

``--precision bf16`` samples as a bf16 LoRA GRPO run does (the examples' setting): the model is
the LoRA model strop trains (frozen linears stored in bf16) and both engines run under bf16
autocast on it; a third engine, ``plain-fp32``, is ``generate`` on the same LoRA model with fp32
weights and no autocast: what a transformers + peft loop samples with by default.

    .venv/bin/python benchmarks/grpo_step.py                 # smollm2-135m-instruct, fp32
    .venv/bin/python benchmarks/grpo_step.py --precision bf16 --steps 0
    .venv/bin/python benchmarks/grpo_step.py --model tiny-llama --repeats 1   # smoke run

Writes benchmarks/results/grpo_step-<device>-<model>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A train travels 60 km in 1 hour. How far does it go in 3 hours?",
    "What is 12 times 7?",
    "Sara reads 15 pages a day. How many pages does she read in a week?",
    "A box holds 24 eggs. How many eggs are in 4 boxes?",
    "Subtract 38 from 100.",
    "There are 9 birds on a tree and 4 fly away. How many are left?",
    "What is half of 86?",
]


def _prompts(tok, n):
    out = []
    for q in (QUESTIONS * n)[:n]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


def _plain(model, tok, prompts, g, new, stops):
    """transformers generate, one padded batch of all prompts, G samples each."""
    tok.padding_side = "left"
    batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
    out = model.generate(
        **batch,
        do_sample=True,
        num_return_sequences=g,
        max_new_tokens=new,
        top_k=0,
        temperature=1.0,
        eos_token_id=stops or None,
        pad_token_id=tok.pad_token_id,
        min_new_tokens=new if not stops else 0,
    )
    gen = out[:, batch["input_ids"].shape[1] :]
    if not stops:
        return gen.numel()
    made = 0
    for row in gen.tolist():  # up to and including the first stop token
        made += next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
    return made


def _strop(model, tok, prompts, g, new, stops, seed):
    from strop.rollout import sample

    r = sample(model, prompts, g, new, stops, tok.pad_token_id, 1.0, 1.0, seed)
    return r.stats["new_tokens"]


def lora_models(model):
    """(the LoRA model strop's bf16 GRPO run samples with: strop's LoRA transform, r16 on all
    linear layers, frozen linears stored in bf16; a user's peft LoRA model of the same shape,
    fp32, as ``peft.get_peft_model`` builds it)."""
    import copy

    from peft import LoraConfig, get_peft_model

    from strop.models.load import frozen_linears_to
    from strop.models.transforms import parse_method

    user = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    ).eval()
    transform, params = parse_method({"name": "lora", "r": 16, "alpha": 32})
    strop_model = transform.apply(model, params).eval()
    frozen_linears_to(strop_model, torch.bfloat16)
    return strop_model, user


def generation(model, tok, n_prompts, g, new, repeats, precision="fp32", fp32_model=None):
    from contextlib import nullcontext

    from strop.infer import stop_token_ids

    prompts = _prompts(tok, n_prompts)
    bf16 = precision == "bf16"
    engines = ("plain-fp32", "plain", "strop") if bf16 else ("plain", "strop")
    rows = []
    for mode, stops in (("fixed", []), ("stops", stop_token_ids(model, tok))):
        times = {e: [] for e in engines}
        tokens = {e: [] for e in engines}
        for rep in range(repeats):  # alternate: machine load hits all alike
            for name in engines:
                torch.manual_seed(rep)
                cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    if name == "plain-fp32":
                        made = _plain(fp32_model, tok, prompts, g, new, stops)
                    else:
                        with cast:
                            made = (
                                _plain(model, tok, prompts, g, new, stops)
                                if name == "plain"
                                else _strop(model, tok, prompts, g, new, stops, rep)
                            )
                times[name].append(time.perf_counter() - t0)
                tokens[name].append(made)
        for name in engines:
            rows.append(
                {
                    "mode": mode,
                    "engine": name,
                    "precision": precision,
                    "prompts": n_prompts,
                    "group": g,
                    "max_new_tokens": new,
                    "seconds_median": statistics.median(times[name]),
                    "new_tokens_mean": statistics.mean(tokens[name]),
                    "tokens_per_s": sum(tokens[name]) / sum(times[name]),
                }
            )
    return rows


def grpo_steps(model_name, n_prompts, g, new, steps):
    from strop.config import load_config
    from strop.train.loop import train

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": "0"}) + "\n" for q in QUESTIONS * 4))
    raw = {
        "model": {"name": model_name},
        "stage": "grpo",
        "method": {"name": "lora", "r": 16, "alpha": 32},
        "data": {"train": str(data), "eval": None, "max_length": 512},
        "train": {
            "output_dir": str(tmp / "run"),
            "max_steps": steps,
            "batch_size": n_prompts,
            "lr": 1e-5,
            "warmup": 0,
            "log_every": 1,
            "eval_every": 0,
            "save_every": 0,
            "progress": False,
            "tensorboard": False,
            "precision": "fp32",
        },
        "grpo": {
            "group_size": g,
            "max_new_tokens": new,
            "beta": 0.04,
            "rewards": ["math_answer", "format_tags"],
        },
    }
    from strop.train.objectives.grpo import GRPOObjective

    starts, original = [], GRPOObjective.rollout

    def timed(self, take, step):  # a step runs from one rollout call to the next
        starts.append(time.perf_counter())
        return original(self, take, step)

    GRPOObjective.rollout = timed
    t0 = time.perf_counter()
    try:
        hist = train(load_config(None, raw=raw)).history
    finally:
        GRPOObjective.rollout = original
    wall = time.perf_counter() - t0
    starts.append(time.perf_counter())  # upper bound for the last step (includes saving)
    rows = []
    for i, h in enumerate(hist):
        row = {
            k: h[k]
            for k in (
                "step",
                "loss",
                "reward",
                "kl",
                "completion_len",
                "time/generate",
                "time/reward",
                "time/reference",
            )
        }
        row["time/step"] = starts[i + 1] - starts[i]
        row["time/train"] = row["time/step"] - sum(h[k] for k in list(row)[5:8])
        rows.append(row)
    return rows, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: a LoRA model with bf16 frozen linears under bf16 autocast",
    )
    args = ap.parse_args()
    from strop.models.load import load_model

    torch.manual_seed(0)
    model, tok, _ = load_model(args.model, "fp32")
    model.eval()
    fp32_model = None
    if args.precision == "bf16":
        model, fp32_model = lora_models(model)
    gen = generation(
        model, tok, args.prompts, args.group, args.new, args.repeats, args.precision, fp32_model
    )
    print(f"{'mode':6} {'engine':10} {'s (median)':>10} {'new tok':>8} {'tok/s':>8}")
    for r in gen:
        print(
            f"{r['mode']:6} {r['engine']:10} {r['seconds_median']:10.2f} "
            f"{r['new_tokens_mean']:8.0f} {r['tokens_per_s']:8.1f}"
        )
    for mode in ("fixed", "stops"):
        rate = {r["engine"]: r["tokens_per_s"] for r in gen if r["mode"] == mode}
        for base in [e for e in rate if e != "strop"]:
            print(f"{mode}: strop / {base} tokens/s = {rate['strop'] / rate[base]:.2f}x")
    if args.steps == 0:
        steps, wall = [], 0.0
    else:
        steps, wall = grpo_steps(args.model, args.prompts, args.group, args.new, args.steps)
    print("\nGRPO steps (LoRA r16, fp32):")
    for r in steps:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    print(f"wall for {args.steps} steps incl. model load: {wall:.1f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    suffix = "" if args.precision == "fp32" else f"-{args.precision}"
    out = RESULTS / f"grpo_step-{device}-{args.model}{suffix}.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "args": vars(args),
                "generation": gen,
                "grpo_steps": steps,
                "grpo_wall_s": wall,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
