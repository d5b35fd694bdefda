"""Generation metrics on tiny-llama: ROUGE / BLEU / chrF recomputed from the written
predictions, n_samples with pass@k recomputed from the written samples, config errors."""

from __future__ import annotations

import json
import re

import pytest
import sacrebleu

from strop.errors import StropError
from strop.eval import text_metrics as tm
from strop.eval.config import load_eval_config
from strop.eval.runner import run_eval
from tests.helpers import write_chat_jsonl


def _run(tmp_path, task: dict, models=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", n=6, seed=2)
    raw = {
        "models": models or {"base": "tiny-llama"},
        "output_dir": str(tmp_path / "out"),
        "bootstrap": 50,
        "tasks": [{"name": "gen", "type": "generation", "data": str(data), **task}],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())["tasks"]["gen"]
    return out, res


def _preds(out, model="base"):
    lines = (out / "predictions" / f"gen.{model}.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_rouge_bleu_chrf_match_independent_recomputation(tmp_path, tiny_llama_dir):
    out, res = _run(
        tmp_path,
        {"metrics": ["rouge", "bleu", "chrf"], "max_new_tokens": 8},
        models={"base": "tiny-llama", "same": "tiny-llama"},
    )
    got = res["results"]["base"]
    assert set(got) == {"rouge1", "rouge2", "rougeL", "bleu", "chrf"}
    preds = _preds(out)
    hyps, refs = [p["prediction"] for p in preds], [p["reference"] for p in preds]
    assert got["bleu"]["value"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert got["chrf"]["value"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert got["bleu"]["reduce"] == "bleu" and len(got["bleu"]["stats"]) == 6
    rl = [tm.rouge_l(h, r) for h, r in zip(hyps, refs, strict=True)]
    assert got["rougeL"]["scores"] == pytest.approx(rl)
    assert res["settings"]["bleu_tokenize"] == "13a"
    for d in res["deltas"]["same"].values():
        assert d["delta"] == 0.0 and d["ci95"] == [0.0, 0.0]


def test_n_samples_and_pass_at_k(tmp_path, tiny_llama_dir):
    pattern = r"\b[a-m]"
    task = {
        "metrics": ["exact_match", "token_f1"],
        "max_new_tokens": 4,
        "temperature": 1.0,
        "n_samples": 4,
        "pass_at_k": [1, 2, 4],
        "pass_check": "regex",
        "pass_pattern": pattern,
    }
    out, res = _run(tmp_path, task)
    got = res["results"]["base"]
    preds = _preds(out)
    assert all(len(p["samples"]) == 4 and p["prediction"] == p["samples"][0] for p in preds)
    # sampling is seeded but not degenerate: some prompt got two different samples
    assert any(len(set(p["samples"])) > 1 for p in preds)
    correct = [sum(re.search(pattern, s) is not None for s in p["samples"]) for p in preds]
    for k in (1, 2, 4):
        assert got[f"pass@{k}"]["scores"] == pytest.approx([tm.pass_at_k(4, c, k) for c in correct])
    assert got["pass@1"]["value"] == pytest.approx(sum(correct) / 24)
    f1 = [sum(tm_f1(s, p["reference"]) for s in p["samples"]) / 4 for p in preds]
    assert got["token_f1"]["scores"] == pytest.approx(f1)  # mean over the samples
    assert res["settings"]["generation"]["n_samples"] == 4
    assert res["settings"]["pass_at_k"] == {"k": [1, 2, 4], "check": "regex", "pattern": pattern}
    # same seed -> the same samples
    out2, _ = _run(tmp_path / "again", task)
    assert [p["samples"] for p in _preds(out2)] == [p["samples"] for p in preds]


def tm_f1(pred, ref):
    from strop.eval.generation import token_f1

    return token_f1(pred, ref)


@pytest.mark.parametrize(
    ("task", "needle"),
    [
        ({"n_samples": 3}, "n_samples: 3 samples need temperature > 0"),
        ({"temperature": 1, "n_samples": 2, "pass_at_k": [3]}, "pass_at_k: k=3 needs"),
        ({"pass_check": "regex"}, "pass_pattern: pass_check regex needs a pattern"),
        ({"pass_check": "regex", "pass_pattern": "("}, "pass_pattern: not a valid regex"),
        ({"pass_pattern": "x"}, "pass_pattern: only used with pass_check: regex"),
        ({"metrics": ["rouge", "bleuu"]}, "tasks.0 (generation): metrics.1:"),
        ({"bleu_tokenize": "zhh"}, "tasks.0 (generation): bleu_tokenize:"),
    ],
)
def test_generation_config_errors_name_the_key(tmp_path, task, needle):
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=2)
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [{"name": "g", "type": "generation", "data": str(data), **task}],
    }
    with pytest.raises(StropError) as err:
        load_eval_config(None, [], raw=raw)
    assert needle in str(err.value)


def test_generation_keys_rejected_on_other_types(tmp_path):
    data = write_chat_jsonl(tmp_path / "c.jsonl", n=2)
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [{"name": "p", "type": "perplexity", "data": str(data), "n_samples": 2}],
    }
    msg = r"tasks.0 \(perplexity\): task 'p': unknown key 'n_samples' \(generation tasks only\)"
    with pytest.raises(StropError, match=msg):
        load_eval_config(None, [], raw=raw)
