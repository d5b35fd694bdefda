"""`strop prepare CONFIG.yaml [overrides]`: clean, dedup, scrub, decontaminate, split, report."""

from __future__ import annotations

import sys

from strop.data.prepare import load_prepare_config, run_prepare


def prepare_command(config: str, overrides: list[str]) -> None:

    cfg, steps = load_prepare_config(config, overrides)
    result = run_prepare(cfg, steps, log=lambda msg: print(msg, file=sys.stderr))
    rep = result.report
    print(
        f"{rep['input']['rows']} rows read ({rep['input']['bad_rows']} malformed), "
        f"{rep['output']['records']} records written, {rep['quarantined']} quarantined "
        f"in {rep['seconds']:.1f} s"
    )
    for step in rep["steps"]:
        rules = ", ".join(f"{k} {v}" for k, v in step["rules"].items())
        print(
            f"  {step['step']:<14} in {step['in']:>8}  changed {step['changed']:>7}  "
            f"removed {step['removed']:>7}" + (f"  ({rules})" if rules else "")
        )
    for key, path in result.files.items():
        print(f"  {key}: {path}")
