"""`strop train CONFIG.yaml [overrides]`."""

from __future__ import annotations

import os
import sys

from strop.config import load_config
from strop.train.loop import Interrupted, train
from strop.train.task_eval import parse_eval_tasks


def train_command(config: str, overrides: list[str]) -> None:

    cfg = load_config(config, overrides)
    parse_eval_tasks(cfg.train.eval_tasks, config)  # before any model work
    try:
        result = train(cfg)
    except Interrupted as exc:
        print(f"strop: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    msg = f"done: {result.steps} steps; final artifacts in {result.final_dir}"
    if result.eval_loss is not None:
        msg += f"; eval loss {result.eval_loss:.4f}"
    if os.environ.get("RANK", "0") == "0":
        print(msg)
