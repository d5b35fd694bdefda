"""`strop merge CONFIG.yaml [overrides]`: merge models, or search merge weights by eval."""

from __future__ import annotations

import sys

from strop.files import output_dir
from strop.merge.config import load_merge_config
from strop.merge.run import run_merge
from strop.merge.search import run_search


def merge_command(config: str, overrides: list[str]) -> None:
    cfg, tree, source = load_merge_config(config, overrides)
    # The output is written as .NAME.tmp beside it and renamed: its folder must be creatable.
    output_dir(cfg.output.dir, "output.dir", create=False)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    if cfg.search is not None:
        result = run_search(cfg, tree, source, log=log)
        print(result.table_md.read_text())
        print(f"best candidate written to {result.best_dir}; table {result.table_md}")
        return

    out = run_merge(cfg, log=log)
    print(f"wrote {out} (manifest: {out / 'merge_manifest.json'})")
