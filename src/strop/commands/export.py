"""`strop export SOURCE --to hf,gguf --quant f16,q8_0 --output DIR`."""

from __future__ import annotations

import sys
from pathlib import Path

from strop.errors import StropRuntimeError
from strop.export.run import ExportRequest, check_request, degraded, run_export
from strop.files import output_dir


def export_command(
    source: str,
    output: str,
    to: str,
    quant: str,
    data: str | None,
    max_ppl_increase: float,
    fail_on_degradation: bool,
) -> None:
    req = ExportRequest(
        source=source,
        output=Path(output),
        targets=[t.strip() for t in to.split(",") if t.strip()],
        quants=[q.strip().lower() for q in quant.split(",") if q.strip()],
        data=Path(data) if data else None,
        max_ppl_increase=max_ppl_increase,
    )
    check_request(req)  # before any model work
    output_dir(output, "--output", create=False)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    report = run_export(req, log)
    print((Path(output) / "export_report.md").read_text())
    print(f"wrote {output} (report: {Path(output) / 'export_report.md'})")
    flagged = degraded(report)
    if flagged and fail_on_degradation:
        raise StropRuntimeError(
            f"{', '.join(flagged)}: perplexity rose more than {100 * max_ppl_increase:.0f}% "
            "over the unquantised model (--fail-on-degradation); the files are written"
        )
