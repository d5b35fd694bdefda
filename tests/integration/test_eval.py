"""`strop eval` end to end on tiny-llama: results layout, perplexity maths, self-comparison,
strict config errors and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from strop.errors import StropError
from strop.eval.config import load_eval_config
from strop.eval.runner import run_eval
from tests.helpers import write_chat_jsonl

JSON_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Extract: {company} pays {n} CNY."},
            {
                "role": "assistant",
                "content": json.dumps({"company": company, "amount": f"{n} CNY"}),
            },
        ]
    }
    for company, n in [("Acme", 5), ("Globex", 12), ("Initech", 7)]
]


def raw_config(tmp_path, data) -> dict:
    return {
        "models": {"base": {"model": "tiny-llama"}, "same": "tiny-llama"},
        "baseline": "base",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "bootstrap": 200,
        "tasks": [
            {"name": "chat", "type": "generation", "data": str(data), "max_new_tokens": 4},
            {"name": "ppl", "type": "perplexity", "data": str(data), "limit": 6},
        ],
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("eval")
    data = write_chat_jsonl(tmp / "chat.jsonl", n=8, seed=1)
    json_data = tmp / "json.jsonl"
    json_data.write_text("".join(json.dumps(r) + "\n" for r in JSON_ROWS))
    raw = raw_config(tmp, data)
    raw["tasks"].append(
        {
            "name": "extract",
            "type": "generation",
            "data": str(json_data),
            "metrics": ["exact_match", "token_f1", "json_fields"],
            "max_new_tokens": 6,
        }
    )
    cfg = load_eval_config(None, [], raw=raw)
    out = run_eval(cfg, log=lambda *_: None)
    return cfg, out, json.loads((out / "results.json").read_text())


def test_results_json_structure(evaluated):
    _, out, res = evaluated
    assert res["baseline"] == "base" and set(res["models"]) == {"base", "same"}
    chat = res["tasks"]["chat"]
    assert chat["settings"]["n"] == 8 and chat["settings"]["chat_template"] is True
    assert chat["settings"]["generation"]["max_new_tokens"] == 4
    assert chat["settings"]["seed"] == 0
    assert set(chat["results"]["base"]) == {"exact_match", "token_f1"}
    em = chat["results"]["base"]["exact_match"]
    assert em["n"] == 8 and len(em["scores"]) == 8 and 0 <= em["value"] <= 1
    assert set(res["tasks"]["ppl"]["results"]["same"]) == {"loss", "ppl", "bits_per_byte"}
    assert res["tasks"]["ppl"]["settings"]["n"] == 6  # limit
    assert set(res["tasks"]["extract"]["results"]["base"]) == {
        "exact_match",
        "token_f1",
        "json_field_accuracy",
        "json_valid",
    }
    assert "base" not in res["tasks"]["chat"]["deltas"]
    for name in ("chat.png", "ppl.png", "extract.png", "report.md", "config.yaml"):
        assert (out / name).is_file(), name
    preds = (out / "predictions" / "chat.same.jsonl").read_text().splitlines()
    assert len(preds) == 8 and {"origin", "prediction", "reference"} <= set(json.loads(preds[0]))


def test_model_against_itself_gives_zero_delta_and_ci(evaluated):
    _, out, res = evaluated
    for task in res["tasks"].values():
        for metric, d in task["deltas"]["same"].items():
            assert d["delta"] == 0.0 and d["ci95"] == [0.0, 0.0], metric
    report = (out / "report.md").read_text()
    assert "| ppl | loss |" in report and "[+0.0000, +0.0000]" in report


def test_perplexity_equals_direct_causal_lm_sums(evaluated):
    from strop.data.batching import collate, unpacked
    from strop.data.render import IGNORE, tokenize_records
    from strop.data.validate import load_records
    from strop.models.load import load_model
    from strop.train.objectives.causal_lm import CausalLMObjective

    cfg, _, res = evaluated
    task = cfg.tasks[1]
    records = load_records(task.data, "auto", kind="chat").records[:6]
    model, tok, _ = load_model("tiny-llama", "fp32")
    samples, _, _ = tokenize_records(
        tok, records, mask="assistant", max_length=1024, truncation="right"
    )
    # One padded batch (2-D mask), not the runner's one-example-at-a-time path.
    batch = collate(unpacked(samples), tok.pad_token_id, doc_attention=False)
    with torch.inference_mode():
        out = CausalLMObjective(model.eval())(**batch)
    loss = float(out["loss_sum"]) / int(out["n_targets"])
    targets = [[y for y in s.labels[1:] if y != IGNORE] for s in samples]
    nbytes = sum(len(tok.decode(t, skip_special_tokens=True).encode()) for t in targets)
    got = res["tasks"]["ppl"]["results"]["base"]
    assert got["loss"]["value"] == pytest.approx(loss, rel=1e-5)
    assert got["ppl"]["value"] == pytest.approx(math.exp(loss), rel=1e-5)
    bpb = float(out["loss_sum"]) / math.log(2) / nbytes
    assert got["bits_per_byte"]["value"] == pytest.approx(bpb, rel=1e-5)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"seeed": 1}, "unknown key 'seeed'; did you mean 'seed'?"),
        (
            {"tasks": [{"name": "t", "type": "perplexity", "data": "D", "limt": 3}]},
            "tasks.0 (perplexity): unknown key 'limt'; did you mean 'limit'?",
        ),
        ({"models": {"m": {"model": "tiny-llama", "adaptr": "x"}}}, "'models.m.adaptr'"),
        ({"baseline": "nope"}, "baseline: 'nope' is not one of the models"),
        ({"tasks": [{"name": "t", "type": "generation", "data": "missing.jsonl"}]}, "tasks.0.data"),
    ],
)
def test_bad_config_names_the_key(tmp_path, patch, needle):
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=2)
    raw = raw_config(tmp_path, data)
    for task in patch.get("tasks", []):
        task["data"] = str(data) if task["data"] == "D" else task["data"]
    raw.update(patch)
    with pytest.raises(StropError) as err:
        load_eval_config(None, [], raw=raw)
    assert needle in str(err.value)


def test_overrides_reach_a_task_by_name(tmp_path):
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=2)
    cfg = load_eval_config(None, ["tasks.ppl.limit=2", "seed=5"], raw=raw_config(tmp_path, data))
    assert cfg.tasks[1].limit == 2 and cfg.seed == 5


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "strop.cli", "eval", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_writes_report_and_exits_2_on_bad_key(tmp_path, tiny_llama_dir):
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=3)
    raw = raw_config(tmp_path, data)
    raw["models"] = {"base": "tiny-llama"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    ok = _cli("cfg.yaml", "tasks.chat.max_new_tokens=2", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "eval" / "report.md").is_file()
    assert "| chat | exact_match |" in ok.stdout
    bad = _cli("cfg.yaml", "tasks.chat.max_new_tokenz=2", cwd=tmp_path)
    assert bad.returncode == 2
    assert (
        "cfg.yaml: tasks.0 (generation): unknown key 'max_new_tokenz'; did you mean" in bad.stderr
    )
    assert "Traceback" not in bad.stderr


def test_preference_task_scores_held_out_pairs(tmp_path):
    """Per-pair margins equal an independent computation: each conversation alone through the
    plain transformers forward, full logits, log_softmax at the response tokens."""
    from strop.data.render import IGNORE
    from strop.data.validate import load_records
    from strop.eval.runner import run_eval
    from strop.models.load import load_model
    from tests.helpers import write_preference_jsonl

    pairs = write_preference_jsonl(tmp_path / "pairs.jsonl", n=7, seed=4)
    raw = {
        "models": {"a": {"model": "tiny-llama", "dtype": "fp32"}},
        "output_dir": str(tmp_path / "out"),
        "tasks": [{"name": "pref", "type": "preference", "data": str(pairs), "batch_size": 3}],
    }
    out = run_eval(load_eval_config(None, raw=raw), log=lambda *a: None)
    got = json.loads((out / "results.json").read_text())["tasks"]["pref"]["results"]["a"]
    model, tok, _ = load_model("tiny-llama", "fp32")
    from strop.data.pairs import tokenize_response

    want = []
    for rec in load_records(pairs, kind="preference").records:
        logp = []
        for side in (rec.chosen, rec.rejected):
            s = tokenize_response(tok, rec.messages, side, rec.origin)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([s.input_ids])).logits[0, :-1]
            y = torch.tensor(s.labels[1:])
            keep = y != IGNORE
            lp = logits.log_softmax(-1)[keep].gather(1, y[keep][:, None]).sum()
            logp.append(lp.item())
        want.append(logp[0] - logp[1])
    assert got["margin"]["scores"] == pytest.approx(want, abs=1e-3)
    assert got["accuracy"]["scores"] == [float(m > 0) for m in got["margin"]["scores"]]
