"""``executor: ray`` on a local single-node Ray cluster (started and shut down by strop): the
same files, byte for byte, as ``executor: local``; a clear error without the extra."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from strop.data.prepare import load_prepare_config, run_prepare
from strop.data.prepare.synthetic import chat_corpus
from strop.errors import StropError

STEPS = [
    {"name": "normalise"},
    {"name": "filter", "min_chars": 1, "refusals": True},
    {"name": "dedup_exact"},
    {"name": "dedup_near", "keep": "longest"},  # deferred decisions, spooled in the driver
    {"name": "pii"},
]


def write_input(path: Path, n: int = 400) -> None:
    """Generated chats with planted exact and near duplicates, refusals and PII, plus one
    unreadable line (quarantined by the reader)."""
    lines = [
        json.dumps(row, ensure_ascii=False)
        for row, _ in chat_corpus(n, seed=7, dup_rate=0.15, near_rate=0.15, refusal_rate=0.03)
    ]
    lines.insert(n // 2, "{not json")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(tmp: Path, data: Path, **top):
    raw = {
        "inputs": [str(data)],
        "output": {"dir": str(tmp)},
        "steps": STEPS,
        "chunk_size": 50,
        "split": {"eval": 0.1, "seed": 3},
        **top,
    }
    cfg, specs = load_prepare_config(None, raw=raw)
    return run_prepare(cfg, specs, log=lambda _: None)


def outputs(res) -> tuple:
    counts = [
        {k: v for k, v in s.items() if "seconds" not in k and k != "records_per_s"}
        for s in res.report["steps"]
    ]
    files = [res.files[k].read_bytes() for k in ("train", "eval", "quarantine")]
    return files, counts, res.report["input"], res.report["output"]["records"]


def test_ray_output_is_byte_identical_to_local(tmp_path: Path):
    pytest.importorskip("ray")
    data = tmp_path / "in.jsonl"
    write_input(data)
    local = run(tmp_path / "local", data, num_workers=1)
    on_ray = run(
        tmp_path / "ray",
        data,
        executor="ray",
        ray={"num_cpus": 2, "actors": 2, "object_store_memory": 100 * 2**20},
    )
    assert outputs(on_ray) == outputs(local)
    steps = {s["step"]: s for s in on_ray.report["steps"]}
    # the input really exercises every kind of decision
    assert steps["filter"]["rules"].get("refusal", 0) > 0
    assert steps["dedup_exact"]["removed"] > 0 and steps["dedup_near"]["removed"] > 0
    assert steps["pii"]["changed"] > 0 and on_ray.report["input"]["bad_rows"] == 1
    assert on_ray.report["executor"] == "ray" and on_ray.report["num_workers"] == 2
    assert on_ray.report["peak_rss_mib"]["largest_worker"] > 0
    import ray

    assert not ray.is_initialized()  # the cluster strop started is shut down


def test_missing_ray_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "in.jsonl"
    write_input(data, 20)
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(StropError, match=r"pip install 'strop\[ray\]'"):
        run(tmp_path / "out", data, executor="ray")


def test_ray_section_is_strict(tmp_path: Path):
    data = tmp_path / "in.jsonl"
    write_input(data, 5)
    with pytest.raises(StropError, match=r"unknown key 'ray.num_cpu'; did you mean 'ray.num_cpus'"):
        run(tmp_path / "a", data, executor="ray", ray={"num_cpu": 2})
    with pytest.raises(StropError, match=r"ray.num_cpus: only for the local cluster"):
        run(tmp_path / "b", data, executor="ray", ray={"address": "auto", "num_cpus": 2})
    with pytest.raises(StropError, match=r"executor"):
        run(tmp_path / "c", data, executor="spark")
