"""The whole pipeline over files: determinism across workers, report counts equal to the
planted truth, bounded memory, bad input, config errors, split and output formats."""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from strop.data.prepare import load_prepare_config, run_prepare
from strop.data.prepare.synthetic import chat_corpus
from strop.errors import StropError

PIPELINE = [
    {"name": "normalise"},
    {"name": "filter", "min_chars": 1, "refusals": True},
    {"name": "dedup_exact"},
    {"name": "dedup_near"},
    {"name": "pii"},
]


def write_corpus(path: Path, n: int, seed: int = 0, **kw) -> list[dict]:
    truths = []
    with open(path, "w", encoding="utf-8") as fh:
        for row, truth in chat_corpus(n, seed=seed, **kw):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            truths.append(truth)
    return truths


def config(tmp: Path, data: Path, steps=PIPELINE, **top) -> dict:
    return {"inputs": [str(data)], "output": {"dir": str(tmp / "out")}, "steps": steps, **top}


def run(raw: dict, overrides: list[str] = ()):
    cfg, steps = load_prepare_config(None, list(overrides), raw=raw)
    return run_prepare(cfg, steps, log=lambda _: None)


def by_step(report: dict) -> dict[str, dict]:
    return {s["step"]: s for s in report["steps"]}


def test_report_counts_equal_the_planted_counts(tmp_path: Path):
    data = tmp_path / "in.jsonl"
    truths = write_corpus(data, 1500, seed=3, refusal_rate=0.02)
    kinds = Counter(t["kind"] for t in truths)
    pii = Counter(t["pii"] for t in truths if "pii" in t)
    res = run(config(tmp_path, data))
    steps = by_step(res.report)
    assert steps["filter"]["rules"] == {"refusal": kinds["refusal"]}
    assert steps["dedup_exact"]["removed"] == kinds["exact_dup"]
    assert steps["dedup_near"]["removed"] == kinds["near_dup"]
    assert steps["pii"]["changed"] == sum(pii.values())
    assert steps["pii"]["notes"] == {f"pii:{k}": n for k, n in sorted(pii.items())}
    assert res.report["output"]["records"] == kinds["unique"]
    # nothing disappears silently: every removal is one quarantine line
    lines = res.files["quarantine"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == res.report["quarantined"] == 1500 - kinds["unique"]
    assert Counter(json.loads(x)["step"] for x in lines) == {
        "filter": kinds["refusal"],
        "dedup_exact": kinds["exact_dup"],
        "dedup_near": kinds["near_dup"],
    }
    assert (res.output_dir / "report.md").read_text().count("| dedup_near |") == 1
    assert (res.output_dir / "lengths.png").stat().st_size > 1000


def test_output_is_identical_for_one_and_two_workers(tmp_path: Path):
    data = tmp_path / "in.jsonl"
    write_corpus(data, 1200, seed=4)
    steps = [*PIPELINE[:3], {"name": "dedup_near", "keep": "longest"}, PIPELINE[4]]
    outs = []
    for workers in (1, 2):
        raw = config(tmp_path / f"w{workers}", data, steps, num_workers=workers, chunk_size=100)
        res = run(raw)
        rep = res.report
        counts = [
            (s["in"], s["kept"], s["changed"], s["removed"], s["rules"], s["notes"])
            for s in rep["steps"]
        ]
        outs.append((res.files["data"].read_bytes(), res.files["quarantine"].read_bytes(), counts))
    assert outs[0] == outs[1]


def test_memory_stays_bounded_as_input_grows(tmp_path: Path):
    """Peak traced memory of the main process (inline run) must not grow with the input for
    stateless steps, and grow only by the dedup index for dedup steps."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_corpus(small, 300, seed=5)
    write_corpus(large, 1200, seed=5)
    peaks = {}
    for name, steps in (("stateless", [PIPELINE[0], PIPELINE[4]]), ("dedup", PIPELINE[2:4])):
        for path in (small, large):
            raw = config(tmp_path / f"{name}-{path.stem}", path, steps, chunk_size=100)
            cfg, specs = load_prepare_config(None, raw=raw)
            tracemalloc.start()
            run_prepare(cfg, specs, log=lambda _: None)
            peaks[name, path.stem] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peaks["stateless", "large"] < 1.3 * peaks["stateless", "small"], peaks
    growth = peaks["dedup", "large"] - peaks["dedup", "small"]
    assert growth / 900 < 2000, peaks  # bytes per extra record: the index entries only


def test_bad_rows_are_quarantined_with_file_and_line(tmp_path: Path):
    data = tmp_path / "in.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    lines = [
        json.dumps(good),
        "{broken",
        json.dumps({"messages": "nope"}),
        json.dumps(good | {"id": 2}),
    ]
    data.write_text("\n".join(lines) + "\n")
    res = run(config(tmp_path, data, [], max_bad_fraction=0.6))
    q = [json.loads(x) for x in res.files["quarantine"].read_text().splitlines()]
    assert [(e["origin"], e["step"], e["rule"]) for e in q] == [
        (f"{data}:2", "read", "bad_row"),
        (f"{data}:3", "read", "bad_row"),
    ]
    assert q[0]["reason"].startswith("invalid JSON") and q[0]["raw"] == "{broken"
    assert res.report["input"] == {"files": [str(data)], "rows": 4, "records": 2, "bad_rows": 2}
    with pytest.raises(StropError, match=r"2 of 4 rows are malformed .*quarantine\.jsonl"):
        run(config(tmp_path / "strict", data, []))


def test_config_errors_name_the_key(tmp_path: Path):
    data = tmp_path / "in.jsonl"
    write_corpus(data, 5)
    with pytest.raises(
        StropError, match=r"steps.1.name: unknown step 'filtr'; did you mean 'filter'\?"
    ):
        run(config(tmp_path, data, ["normalise", {"name": "filtr"}]))
    with pytest.raises(
        StropError, match=r"unknown key 'steps.0.min_char'; did you mean 'steps.0.min_chars'\?"
    ):
        run(config(tmp_path, data, [{"name": "filter", "min_char": 3}]))
    with pytest.raises(StropError, match=r"unknown key 'num_worker'; did you mean 'num_workers'\?"):
        run(config(tmp_path, data, [], num_worker=2))
    with pytest.raises(StropError, match="file not found"):
        run(config(tmp_path, tmp_path / "missing.jsonl", []))
    with pytest.raises(StropError, match="steps.0.threshold"):
        run(config(tmp_path, data, ["dedup_near"]), ["steps.dedup_near.threshold=2"])


def test_overrides_reach_steps_by_name(tmp_path: Path):
    data = tmp_path / "in.jsonl"
    write_corpus(data, 50, seed=1)
    cfg, steps = load_prepare_config(
        None,
        ["steps.filter.min_chars=7", "steps.1.languages=[zh]", "num_workers=0"],
        raw=config(tmp_path, data, ["normalise", "filter"]),
    )
    assert steps[1][1].min_chars == 7 and steps[1][1].languages == ["zh"] and cfg.num_workers == 0


def test_stratified_split_and_parquet(tmp_path: Path):
    data = tmp_path / "in.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i}"},
            ],
            "source": "a" if i % 4 else "b",
        }
        for i in range(200)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = config(
        tmp_path,
        data,
        [],
        split={"eval": 0.1, "stratify": "source", "seed": 1},
        output={"dir": str(tmp_path / "out"), "parquet": True},
    )
    res = run(raw)
    assert res.report["output"]["split"]["strata"] == {
        "b": {"train": 45, "eval": 5},
        "a": {"train": 135, "eval": 15},
    }
    ev = [json.loads(x) for x in res.files["eval"].read_text().splitlines()]
    assert Counter(r["source"] for r in ev) == {"a": 15, "b": 5}
    import pyarrow.parquet as pq

    table = pq.read_table(res.files["train_parquet"])
    assert table.num_rows == 180 and "messages" in table.column_names
    from strop.data.validate import load_records

    assert len(load_records(res.files["train_parquet"]).records) == 180  # readable by training


def test_preference_input_to_kto_output(tmp_path: Path):
    data = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": "Say bye", "chosen": "Bye!", "rejected": "Ｂｙｅ！"},  # equal once normalised
        {"prompt": "Same", "chosen": "x", "rejected": "x"},  # the reader itself refuses this one
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(
        config(
            tmp_path, data, ["normalise", {"name": "convert", "to": "kto"}], max_bad_fraction=0.5
        )
    )
    out = [json.loads(x) for x in res.files["data"].read_text().splitlines()]
    assert [(r["completion"][0]["content"], r["label"]) for r in out] == [
        ("Hello!", True),
        ("Go away.", False),
    ]
    assert by_step(res.report)["convert"]["rules"] == {"identical_pair": 1, "pair_to_kto": 1}
    q = [json.loads(x) for x in res.files["quarantine"].read_text().splitlines()]
    assert [(e["step"], e["rule"]) for e in q] == [
        ("convert", "identical_pair"),
        ("read", "bad_row"),
    ]
    assert "identical" in q[1]["reason"]
