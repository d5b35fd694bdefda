"""The forgetting section end to end: a general perplexity task, two different tiny models."""

from __future__ import annotations

import json

from strop.eval.config import load_eval_config
from strop.eval.forgetting import verdict
from strop.eval.runner import run_eval
from tests.helpers import write_chat_jsonl


def test_report_has_what_was_lost_section(tmp_path, tiny_llama_dir, tiny_qwen2_dir):
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=6, seed=5)
    raw = {
        "models": {"base": "tiny-llama", "other": "tiny-qwen2"},
        "output_dir": str(tmp_path / "out"),
        "bootstrap": 100,
        "tasks": [
            {"name": "domain", "type": "perplexity", "data": str(data), "limit": 3},
            {"name": "general-ppl", "type": "perplexity", "data": str(data), "general": True},
        ],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())
    assert set(res["forgetting"]) == {"general-ppl"}
    assert res["tasks"]["general-ppl"]["settings"]["general"] is True
    rows = res["forgetting"]["general-ppl"]["other"]
    assert set(rows) == {"loss", "ppl", "bits_per_byte"}
    for metric, r in rows.items():
        d = res["tasks"]["general-ppl"]["deltas"]["other"][metric]
        assert r["delta"] == d["delta"] and r["ci95"] == d["ci95"]
        assert r["verdict"] == verdict(metric, d["delta"], *d["ci95"])
        assert r["delta"] != 0.0  # two different random models
    report = (out / "report.md").read_text()
    assert "## What was lost (general-ability tasks)" in report
    assert "| general-ppl | loss | other |" in report
    assert "| domain | loss | other |" not in report.split("## What was lost")[1]
