"""`strop prepare` end to end on the shipped example, and its exit codes for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def strop(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from strop.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_example_config_runs_end_to_end(tmp_path: Path):
    out = tmp_path / "out"
    proc = strop("prepare", "examples/prepare/config.yaml", f"output.dir={out}", "num_workers=2")
    assert proc.returncode == 0, proc.stderr
    assert "records written" in proc.stdout and "dedup_near" in proc.stdout
    for name in (
        "data.train.jsonl",
        "data.eval.jsonl",
        "data.train.parquet",
        "quarantine.jsonl",
        "report.json",
        "report.md",
        "lengths.png",
        "config.yaml",
    ):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert report["input"]["bad_rows"] == 1
    assert steps["decontaminate"]["removed"] == 2  # the two rows that copy eval questions
    assert steps["normalise"]["notes"]["mojibake"] == 1
    quarantine = (out / "quarantine.jsonl").read_text().splitlines()
    assert len(quarantine) == report["quarantined"]
    kept = sum(1 for _ in (out / "data.train.jsonl").open()) + sum(
        1 for _ in (out / "data.eval.jsonl").open()
    )
    assert kept + report["quarantined"] == report["input"]["rows"]  # nothing disappears


def test_bad_config_exits_2_with_one_sentence(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "inputs: [examples/prepare/sample.jsonl]\nsteps:\n  - name: dedup_near\n    treshold: 0.9\n"
    )
    proc = strop("prepare", str(cfg))
    assert proc.returncode == 2
    assert "unknown key 'steps.0.treshold'; did you mean 'steps.0.threshold'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = strop("prepare", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr
