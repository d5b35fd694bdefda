"""`strop eval CONFIG.yaml [overrides]`: base-vs-tuned metrics with bootstrap CIs."""

from __future__ import annotations

import sys

from strop.eval.config import load_eval_config
from strop.eval.runner import run_eval
from strop.files import output_dir


def eval_command(config: str, overrides: list[str]) -> None:

    cfg = load_eval_config(config, overrides)
    output_dir(cfg.output_dir, "output_dir")  # a sentence, before any model loads
    out = run_eval(cfg, log=lambda msg: print(msg, file=sys.stderr))
    print((out / "report.md").read_text())
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
