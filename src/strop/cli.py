"""The `strop` console script: parse, load config, call one function per verb.

User mistakes (StropError) become one sentence on stderr and exit code 2; runtime failures exit
1. Tracebacks are shown only with STROP_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import typer

from strop.errors import StropError, StropRuntimeError

app = typer.Typer(
    name="strop",
    help=(
        "Turn a general LLM into a specialist: prepare data, train any stage with any method, "
        "evaluate, merge, then chat with it or run it over a file."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at data as the trainer will see it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

OVERRIDES_HELP = "Dotted overrides, e.g. train.lr=1e-4 method.r=8"


@app.command(
    help="Train any stage (pt, sft, rm, dpo, orpo, simpo, kto, ppo, grpo) with any method "
    "(full, freeze, bitfit, lora, dora, qlora, ia3, adapter, prompt, prefix, ptuning)."
)
def train(
    config: str = typer.Argument(..., help="YAML config file"),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    from strop.commands.train import train_command

    train_command(config, overrides or [])


@app.command()
def prepare(
    config: str = typer.Argument(..., help="YAML prepare config (inputs, steps, output)"),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides, e.g. num_workers=2 steps.filter.min_chars=5"
    ),
) -> None:
    """Clean data: normalise, filter, dedup (exact/near), PII, decontaminate, convert, split."""
    from strop.commands.prepare import prepare_command

    prepare_command(config, overrides or [])


@app.command(
    "eval",
    help="Score models on tasks (generation, perplexity, multiple_choice, preference, "
    "classification, reward, judge, retrieval); deltas with 95% bootstrap CIs and what "
    "general ability was lost.",
)
def eval_(
    config: str = typer.Argument(..., help="YAML eval config (models, baseline, tasks)"),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides, e.g. seed=1 tasks.events.limit=10"
    ),
) -> None:
    from strop.commands.eval import eval_command

    eval_command(config, overrides or [])


@app.command(
    help="Merge models: linear, task_arithmetic, slerp, ties, dare_linear, dare_ties, "
    "checkpoint_average; with a search: section, pick weights by eval score."
)
def merge(
    config: str = typer.Argument(..., help="YAML merge config (method, models, output)"),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides, e.g. params.t=0.3 models.0.weight=0.7"
    ),
) -> None:
    from strop.commands.merge import merge_command

    merge_command(config, overrides or [])


@app.command()
def export(
    source: str = typer.Argument(..., help="Run dir, adapter dir, HF dir or known model name"),
    output: str = typer.Option(..., "--output", "-o", help="New directory for the artifacts"),
    to: str = typer.Option("hf,gguf", "--to", help="Targets, comma-separated: hf, gguf"),
    quant: str = typer.Option(
        "f16", "--quant", help="GGUF types, comma-separated: f32, f16, bf16, q8_0, q4_0"
    ),
    data: str = typer.Option(
        None, "--data", help="Held-out JSONL for the quality check (default: a run's eval split)"
    ),
    max_ppl_increase: float = typer.Option(
        0.10, help="Flag a quantised file whose perplexity rises more than this (0.10 = 10%)"
    ),
    fail_on_degradation: bool = typer.Option(
        False, "--fail-on-degradation", help="Exit 1 when a quantised file is flagged"
    ),
) -> None:
    """Export a model or a trained specialist: merged HF dir, GGUF files, a quality report."""
    from strop.commands.export import export_command

    export_command(source, output, to, quant, data, max_ppl_increase, fail_on_degradation)


@data_app.command("inspect")
def data_inspect(
    config: str = typer.Argument(..., help="YAML config file"),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP),
    samples: int = typer.Option(2, "--samples", "-n", help="How many rendered samples to show"),
) -> None:
    """Show rendered samples with trained vs masked tokens, and per-split counts."""
    from strop.commands.inspect import inspect_command

    inspect_command(config, overrides or [], samples)


@app.command()
def models() -> None:
    """List known model names and where they live."""
    from strop.commands.infer import models_command

    models_command()


@app.command()
def chat(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model name or dir"),
    adapter: str = typer.Option(None, "--adapter", "-a", help="PEFT adapter dir (e.g. final/)"),
    system: str = typer.Option(None, "--system", help="System prompt"),
    max_new_tokens: int = typer.Option(256, help="Tokens to generate per reply"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass"),
) -> None:
    """Interactive terminal chat (/reset clears history, /exit quits)."""
    from strop.commands.infer import chat_command

    chat_command(model, adapter, system, max_new_tokens, temperature, top_p)


@app.command()
def generate(
    input: str = typer.Option(..., "--input", "-i", help="JSONL with 'messages' or 'prompt'"),
    output: str = typer.Option(..., "--output", "-o", help="JSONL written with 'completion'"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model name or dir"),
    adapter: str = typer.Option(None, "--adapter", "-a", help="PEFT adapter dir"),
    max_new_tokens: int = typer.Option(256, help="Tokens to generate per prompt"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass"),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)"),
    batch_size: int = typer.Option(
        32, help="Rows decoding at once (a finished row's slot goes to the next prompt)"
    ),
    seed: int = typer.Option(0, help="Sampling seed (prompt i draws with seed + i)"),
    weights: str = typer.Option(
        "auto",
        help="auto: fp16 copies of the weights in the decode step on x86 CPUs in fp32 "
        "(~2x faster); exact: the model's own weights",
    ),
) -> None:
    """Batch inference over a JSONL file."""
    from strop.commands.infer import generate_command

    generate_command(
        model,
        adapter,
        input,
        output,
        max_new_tokens,
        temperature,
        top_p,
        stop or [],
        batch_size,
        seed,
        weights,
    )


def main() -> None:
    try:
        app()
    except (StropError, StropRuntimeError) as exc:
        if os.environ.get("STROP_DEBUG"):
            raise
        print(f"strop: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
