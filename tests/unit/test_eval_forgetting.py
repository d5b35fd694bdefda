"""The "what was lost" section: verdicts oriented by metric direction, and the report table."""

from __future__ import annotations

import pytest

from strop.errors import StropError
from strop.eval.config import load_eval_config
from strop.eval.forgetting import forgetting_summary, render_forgetting, verdict
from strop.eval.runner import _fmt, _signed


@pytest.mark.parametrize(
    ("metric", "delta", "lo", "hi", "want"),
    [
        ("accuracy", -0.2, -0.3, -0.1, "lost"),
        ("accuracy", -0.05, -0.15, 0.05, "worse (noise)"),
        ("accuracy", 0.2, 0.1, 0.3, "gained"),
        ("accuracy", 0.0, -0.1, 0.1, "no significant change"),
        ("loss", 0.3, 0.1, 0.5, "lost"),  # higher loss is worse
        ("ppl", -1.0, -2.0, -0.5, "gained"),
        ("bits_per_byte", 0.01, -0.01, 0.03, "worse (noise)"),
    ],
)
def test_verdict_orientation(metric, delta, lo, hi, want):
    assert verdict(metric, delta, lo, hi) == want


def _cfg(tmp_path, **extra):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    raw = {
        "models": {"base": "tiny-llama", "tuned": "tiny-llama"},
        "tasks": [
            {"name": "domain", "type": "perplexity", "data": str(data)},
            {"name": "mmlu", "type": "perplexity", "data": str(data), "general": True},
            {"name": "wiki", "type": "perplexity", "data": str(data)},
        ],
        **extra,
    }
    return load_eval_config(None, [], raw=raw)


def _results():
    def task(base, tuned, delta, ci):
        return {
            "results": {"base": {"loss": {"value": base}}, "tuned": {"loss": {"value": tuned}}},
            "deltas": {"tuned": {"loss": {"delta": delta, "ci95": ci}}},
        }

    return {
        "tasks": {
            "domain": task(2.0, 1.0, -1.0, [-1.2, -0.8]),
            "mmlu": task(1.5, 1.8, 0.3, [0.1, 0.5]),
            "wiki": task(1.0, 1.02, 0.02, [-0.01, 0.05]),
        }
    }


def test_section_lists_general_tasks_and_highlights_losses(tmp_path):
    cfg = _cfg(tmp_path, forgetting=["wiki"])
    summary = forgetting_summary(cfg, _results())
    assert set(summary) == {"mmlu", "wiki"}  # the domain task is not a general one
    assert summary["mmlu"]["tuned"]["loss"]["verdict"] == "lost"
    assert summary["wiki"]["tuned"]["loss"]["verdict"] == "worse (noise)"
    text = "\n".join(render_forgetting(cfg, summary, _fmt, _signed))
    assert "## What was lost (general-ability tasks)" in text
    assert (
        "| mmlu | loss | tuned | 1.5000 | 1.8000 | **+0.3000 [+0.1000, +0.5000]** | **lost** |"
        in text
    )
    assert (
        "| wiki | loss | tuned | 1.0000 | 1.0200 | +0.0200 [-0.0100, +0.0500] | worse (noise) |"
        in text
    )
    assert "1 significant loss(es)." in text


def test_no_general_task_no_section_and_unknown_name_is_an_error(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.tasks[1].general = False
    assert render_forgetting(cfg, {}, _fmt, _signed) == []
    with pytest.raises(StropError, match="forgetting: nope is not a task name"):
        _cfg(tmp_path, forgetting=["nope"])
