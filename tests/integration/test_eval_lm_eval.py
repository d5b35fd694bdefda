"""The lm-evaluation-harness adapter (model type ``strop``) answers hand-made requests exactly as
lm-eval's own ``hf`` model does on the same tiny-llama weights: log-likelihoods and greedy
flags, rolling log-likelihoods across windows, greedy generation with stop strings, and with
a LoRA adapter applied. Skipped when lm-eval (optional extra ``lm-eval``) is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from strop.eval.lm_eval_adapter import StropLM  # noqa: E402

LOGLIK = [
    ("Question: alpha beta?\nAnswer:", " gamma"),
    ("Question: alpha beta?\nAnswer:", " delta lima"),  # shares the context above
    ("Question: alpha beta?\nAnswer:", " A"),
    ("one two ", "three"),  # trailing space moves into the continuation
    ("", "zulu tango"),  # empty context: the prefix token
    ("red", " green blue red green"),
]
TEXT = "the red kilo tango went over the green zulu and back again " * 2


def _reqs(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def models(tiny_llama_dir, monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    hf = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1, dtype="float32")
    return hf, StropLM(model="tiny-llama", dtype="fp32", batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_registered_under_strop():
    from lm_eval.api.registry import get_model

    assert get_model("strop") is StropLM


def test_loglikelihood_matches_lm_eval_hf(models):
    hf, st = models
    want = hf.loglikelihood(_reqs("loglikelihood", LOGLIK), disable_tqdm=True)
    got = st.loglikelihood(_reqs("loglikelihood", LOGLIK))
    assert [g for _, g in got] == [g for _, g in want]
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in want], abs=1e-4, rel=1e-6)


@pytest.mark.parametrize("max_length", [16, None])
def test_rolling_loglikelihood_matches_lm_eval_hf(models, tiny_llama_dir, max_length):
    hf, st = models
    if max_length:  # short windows: the text spans several
        hf = HFLM(
            pretrained=str(tiny_llama_dir),
            device="cpu",
            batch_size=1,
            dtype="float32",
            max_length=max_length,
        )
        st = StropLM(model="tiny-llama", dtype="fp32", max_length=max_length, device="cpu")
    args = [(TEXT,), ("alpha",)]
    want = hf.loglikelihood_rolling(_reqs("loglikelihood_rolling", args), disable_tqdm=True)
    got = st.loglikelihood_rolling(_reqs("loglikelihood_rolling", args))
    assert got == pytest.approx(want, abs=1e-3, rel=1e-6)


def test_generate_until_matches_lm_eval_hf(models):
    hf, st = models
    args = [
        ("alpha beta gamma", {"until": ["\n", "zulu"], "max_gen_toks": 12}),
        ("one two three", {"until": ["a"], "max_gen_toks": 20, "do_sample": False}),
        ("kilo", {"max_gen_toks": 5}),
    ]
    want = hf.generate_until(_reqs("generate_until", args), disable_tqdm=True)
    got = st.generate_until(_reqs("generate_until", args))
    assert got == want
    assert "a" not in got[1]  # cut at the stop string


def test_adapter_is_applied(tiny_llama_dir, tmp_path, monkeypatch):
    """strop's base + LoRA adapter scores as lm-eval's hf model scores the merged weights (not
    hf's own peft= path: it first resizes the embeddings to the tokenizer's 262 tokens, which
    changes tiny-llama's 288-way softmax)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(tmp_path / "lora")
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    st = StropLM(model="tiny-llama", adapter=str(tmp_path / "lora"), dtype="fp32", device="cpu")
    st.tokenizer.save_pretrained(tmp_path / "merged")
    hf = HFLM(pretrained=str(tmp_path / "merged"), device="cpu", batch_size=1, dtype="float32")
    plain = StropLM(model="tiny-llama", dtype="fp32", device="cpu")
    want = hf.loglikelihood(_reqs("loglikelihood", LOGLIK), disable_tqdm=True)
    got = st.loglikelihood(_reqs("loglikelihood", LOGLIK))
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in want], abs=1e-4, rel=1e-6)
    without = plain.loglikelihood(_reqs("loglikelihood", LOGLIK))
    assert [ll for ll, _ in got] != pytest.approx([ll for ll, _ in without], abs=1e-2)


def test_empty_continuation_scores_zero(models):
    _, st = models
    [(ll, greedy)] = st.loglikelihood(_reqs("loglikelihood", [("alpha beta", "")]))
    assert (ll, greedy) == (0.0, True)


REPO = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("task_name", "score"), [("strop_mc", "letter"), ("strop_mc_text", "text")]
)
def test_lm_eval_acc_and_acc_norm_map_to_strop(models, monkeypatch, task_name, score):
    """lm-eval's evaluator on the bundled local task (strop's prompt) through the adapter:
    per question the four log-likelihoods are strop's own, ``acc`` is strop's ``accuracy``,
    and ``acc_norm`` (log-likelihood / characters of the choice, without the delimiter space)
    is strop's ``accuracy_norm``."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from strop.eval.config import load_eval_config
    from strop.eval.multiple_choice import load_mc_file, score_choices

    _, st = models
    monkeypatch.chdir(REPO)  # the task's data_files path is relative to the repo root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = simple_evaluate(
        model=st,
        tasks=[task_name],
        task_manager=TaskManager(
            include_path=str(REPO / "examples/eval/lm_eval"), include_defaults=False
        ),
        log_samples=True,
        verbosity="ERROR",
    )
    samples = sorted(out["samples"][task_name], key=lambda s: s["doc_id"])
    data = REPO / "examples/eval/mc.jsonl"
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [{"name": "mc", "type": "multiple_choice", "data": str(data), "score": score}],
    }
    rows = score_choices(
        st.model, st.tokenizer, load_eval_config(None, [], raw=raw).tasks[0], load_mc_file(data)
    )
    assert len(samples) == len(rows) == 8
    for s, r in zip(samples, rows, strict=True):
        lls = [float(resp[0][0]) for resp in s["resps"]]
        assert lls == pytest.approx(r["ll"], abs=1e-5, rel=0)
        assert s["acc"] == float(r["pred"] == r["answer"])
        choices = s["doc"]["choices"] if score == "text" else ["A", "B", "C", "D"]
        lm_eval_norm = max(range(4), key=lambda i: lls[i] / len(choices[i]))
        assert s["acc_norm"] == float(lm_eval_norm == r["answer"])
        assert r["pred_norm"] == lm_eval_norm
