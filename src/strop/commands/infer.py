"""`strop models`, `strop generate` and `strop chat`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from strop.errors import StropError
from strop.files import output_file
from strop.hub import KNOWN_MODELS, is_materialised, materialised_path
from strop.infer import GenerationParams, check_params, generate
from strop.models.load import load_model

ROLES = ("system", "user", "assistant", "tool")


def models_command() -> None:
    """Print the known model names, whether each is built yet and where it lives."""
    table = Table(title="strop models")
    # Names are what users type, so they never wrap; long paths fold rather than truncate.
    table.add_column("name", no_wrap=True, min_width=max(map(len, KNOWN_MODELS)))
    table.add_column("description")
    table.add_column("materialised", no_wrap=True)
    table.add_column("local path", overflow="fold")
    for name, known in KNOWN_MODELS.items():
        ready = is_materialised(name)
        path = str(materialised_path(name)) if ready else "(built on first use)"
        table.add_row(name, known.description, "yes" if ready else "no", path)
    console = Console()
    console.print(table)
    console.print("Any local HF model dir (with config.json) or a .gguf file path also works.")


def _load(model: str, adapter: str | None):
    import torch

    loaded, tokenizer, _ = load_model(model, "auto", adapter)
    if torch.cuda.is_available():
        loaded = loaded.to("cuda")
    return loaded, tokenizer


def _check_messages(messages: object, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise StropError(f"{where}: 'messages' must be a non-empty list of role/content objects")
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise StropError(f"{where}: messages[{n}] must be an object with role and content")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise StropError(f"{where}: messages[{n}].role must be one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise StropError(f"{where}: messages[{n}].content must be a string")
    return messages


def read_prompts(path: str) -> tuple[list[dict], list[str | list[dict]]]:
    """Parse the generate input: rows as given, plus the prompt for each row.

    A conversation that already ends with an assistant turn has that turn split off as the
    ``reference`` answer, so one file serves both for generation and for comparison.
    """
    file = Path(path)
    if not file.is_file():
        raise StropError(f"{path}: input file not found")
    rows: list[dict] = []
    prompts: list[str | list[dict]] = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StropError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise StropError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
        if "messages" in row:
            messages = _check_messages(row["messages"], where)
            if messages[-1]["role"] == "assistant":
                row = {**row, "reference": messages[-1]["content"]}
                messages = messages[:-1]
            if not any(m["role"] == "user" for m in messages):
                raise StropError(f"{where}: 'messages' holds no user turn to answer")
            prompts.append(messages)
        elif "prompt" in row:
            if not isinstance(row["prompt"], str):
                raise StropError(f"{where}: 'prompt' must be a string")
            prompts.append(row["prompt"])
        else:
            raise StropError(f"{where}: row has neither a 'messages' nor a 'prompt' field")
        rows.append(row)
    if not rows:
        raise StropError(f"{path}: no rows to generate from")
    return rows, prompts


def generate_command(
    model: str,
    adapter: str | None,
    input: str,
    output: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: list[str],
    batch_size: int,
    seed: int,
    weights: str = "auto",
) -> None:
    """Complete every row of a JSONL file and write the rows back with a ``completion``."""
    rows, prompts = read_prompts(input)  # validate before the (slow) model load
    output_file(output, "--output")
    params = GenerationParams(
        max_new_tokens, temperature, top_p, list(stop), batch_size, seed, weights
    )
    check_params(params)
    loaded, tokenizer = _load(model, adapter)
    stats: dict = {}
    start = time.perf_counter()
    # a bar on a terminal; in a log file a line every 10 s, so a long run never looks hung
    completions = generate(loaded, tokenizer, prompts, params, progress=input, stats=stats)
    elapsed = max(time.perf_counter() - start, 1e-9)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row, completion in zip(rows, completions, strict=True):
            fh.write(json.dumps({**row, "completion": completion}, ensure_ascii=False) + "\n")
    tokens = stats.get("new_tokens", 0)
    print(
        f"generated {len(rows)} completions ({tokens} tokens) in {elapsed:.1f}s, "
        f"{tokens / elapsed:.1f} tokens/s -> {output}"
    )


def chat_command(
    model: str,
    adapter: str | None,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> None:
    """A read-reply loop with multi-turn history; works on a terminal and on piped stdin."""
    params = GenerationParams(max_new_tokens, temperature, top_p, batch_size=1)
    loaded, tokenizer = _load(model, adapter)
    interactive = sys.stdin.isatty()
    if interactive:
        print("strop chat: /reset clears the history, /exit (or Ctrl-D) quits.")
    history: list[dict] = []
    while True:
        try:
            # On piped input the prompt would only clutter the transcript.
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = []
            print("(history cleared)")
            continue
        history.append({"role": "user", "content": text})
        # A new seed per turn: with sampling, repeating a question should not echo an answer.
        params.seed = len(history)
        reply = generate(loaded, tokenizer, [history], params, system=system)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}", flush=True)
