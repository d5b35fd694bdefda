"""`multiple_choice` eval tasks on tiny-llama: per-choice log-likelihoods match an independent
reference implementation, tokenization boundaries, bad rows, results layout."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from strop.errors import StropError
from strop.eval.config import load_eval_config
from strop.eval.loglik import continuation_logprobs
from strop.eval.multiple_choice import build_prompt, load_mc_file, pick_shots, score_choices
from strop.eval.runner import run_eval

ROWS = [
    {
        "question": "What is 2 + 2?",
        "A": "3",
        "B": "4",
        "C": "5",
        "D": "22",
        "answer": "B",
        "subject": "math",
    },
    {
        "question": "Capital of France?",
        "A": "Paris",
        "B": "Rome",
        "C": "Oslo",
        "D": "Bern",
        "answer": "A",
        "subject": "geo",
    },
    {
        "question": "What is 3 * 3?",
        "A": "6",
        "B": "33",
        "C": "9",
        "D": "0",
        "answer": "2",
        "subject": "math",
    },
    {
        "question": "Largest ocean?",
        "A": "Indian",
        "B": "Arctic",
        "C": "Atlantic",
        "D": "Pacific",
        "answer": "D",
        "subject": "geo",
    },
    {
        "question": "Sky colour on a clear day?",
        "A": "Blue",
        "B": "Green",
        "C": "Red",
        "D": "",
        "answer": "A",
        "subject": "misc",
    },
]
DEV = [
    {"question": "1 + 1?", "choices": ["2", "3", "4"], "answer": 0, "subject": "math"},
    {
        "question": "Capital of Italy?",
        "choices": ["Rome", "Paris"],
        "answer": "A",
        "subject": "geo",
    },
    {"question": "5 - 2?", "choices": ["1", "3"], "answer": 1, "subject": "math"},
    {
        "question": "Capital of Spain?",
        "choices": ["Lisbon", "Madrid"],
        "answer": "B",
        "subject": "geo",
    },
    {"question": "Grass colour?", "choices": ["Green", "Pink"], "answer": "A", "subject": "misc"},
    {"question": "Snow colour?", "choices": ["Black", "White"], "answer": "B", "subject": "misc"},
]


def write_csv(path, rows):
    cols = ["question", "A", "B", "C", "D", "answer", "subject"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from strop.models.load import load_model

    model, tok, _ = load_model("tiny-llama", "fp32")
    return model.eval(), tok


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mc")
    return write_csv(tmp / "test.csv", ROWS), write_jsonl(tmp / "dev.jsonl", DEV)


def task_spec(data, dev=None, shots=0, score="letter", batch_size=3):
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [
            {
                "name": "mc",
                "type": "multiple_choice",
                "data": str(data),
                "shots": shots,
                "score": score,
                "batch_size": batch_size,
                **({"dev": str(dev)} if dev else {}),
            }
        ],
    }
    return load_eval_config(None, [], raw=raw).tasks[0]


def reference_loglik(model, tok, context: str, cont: str) -> tuple[float, list[int]]:
    """Straightforward: one forward on context+continuation, log_softmax, sum the positions of
    the continuation tokens (those past the context's own encoding)."""
    ctx = tok(context)["input_ids"]
    whole = tok(context + cont)["input_ids"]
    assert whole[: len(ctx)] == ctx
    cont_ids = whole[len(ctx) :]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    total = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont_ids))
    return total, cont_ids


@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("score", ["letter", "text"])
def test_loglik_and_predictions_match_reference(tiny, files, shots, score):
    model, tok = tiny
    data, dev = files
    task = task_spec(data, dev if shots else None, shots, score)
    examples = load_mc_file(data)
    rows = score_choices(model, tok, task, examples)
    dev_rows = load_mc_file(dev)
    assert len(rows) == len(ROWS)
    for ex, row in zip(examples, rows, strict=True):
        shots_used = pick_shots(ex, dev_rows, shots)
        assert all(s.subject == ex.subject for s in shots_used) and len(shots_used) == shots
        prompt = build_prompt(ex, shots_used, score)
        assert prompt.endswith("\nAnswer:") and prompt.count("Question:") == shots + 1
        conts = [" " + (chr(65 + i) if score == "letter" else c) for i, c in enumerate(ex.choices)]
        ref = [reference_loglik(model, tok, prompt, c)[0] for c in conts]
        assert row["conts"] == conts
        assert row["ll"] == pytest.approx(ref, abs=1e-5)
        assert row["pred"] == max(range(len(ref)), key=ref.__getitem__)
        norm = [r / len(c.removeprefix(" ")) for r, c in zip(ref, conts, strict=True)]
        assert row["pred_norm"] == max(range(len(norm)), key=norm.__getitem__)
    assert len(rows[4]["ll"]) == 3  # empty D column: three choices


def test_continuation_starting_with_space_scores_only_its_tokens(tiny):
    model, tok = tiny
    context, cont = "Question: Name a colour.\nAnswer:", " Blue sky"
    total, cont_ids = reference_loglik(model, tok, context, cont)
    assert tok.decode(cont_ids) == cont  # the leading space belongs to the continuation
    ctx_ids = tok(context)["input_ids"]
    [got] = continuation_logprobs(model, [(ctx_ids, cont_ids)], pad_id=tok.pad_token_id)
    assert got == pytest.approx(total, abs=1e-5)
    # Scoring one token fewer (or more) gives a different number: only continuation positions.
    [shorter] = continuation_logprobs(model, [(ctx_ids + cont_ids[:1], cont_ids[1:])])
    assert shorter != pytest.approx(total, abs=1e-5)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx_ids + cont_ids])).logits[0], -1)
    first = float(logp[len(ctx_ids) - 1, cont_ids[0]])
    assert total == pytest.approx(first + shorter, abs=1e-5)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"question": "q", "choices": ["a", "b"], "answer": "C"}', ":2: answer 'C' is out of"),
        ('{"question": "q", "choices": ["a"], "answer": 0}', ":2: need at least 2 choices"),
        ('{"choices": ["a", "b"], "answer": 0}', ":2: missing or empty 'question'"),
        ('{"question": "q", "A": "a", "B": "b"}', ":2: missing 'answer'"),
        ('{"question": "q", "A": "a", "C": "c", "answer": 0}', "column B is empty but C is set"),
        ("{not json", ":2: invalid JSON"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(tmp_path, text, needle):
    good = '{"question": "ok", "choices": ["a", "b"], "answer": 1}'
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + text + "\n")
    with pytest.raises(StropError) as err:
        load_mc_file(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_bad_csv_row_names_file_and_line(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1], answer="Z")]
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(StropError, match=r"bad\.csv:3: answer 'Z' is out of range"):
        load_mc_file(path)


def test_results_json_has_accuracies_and_per_subject(tmp_path, files, tiny_llama_dir):
    data, dev = files
    raw = {
        "models": {"base": "tiny-llama", "same": "tiny-llama"},
        "output_dir": str(tmp_path / "out"),
        "bootstrap": 50,
        "tasks": [
            {
                "name": "mc",
                "type": "multiple_choice",
                "data": str(data),
                "dev": str(dev),
                "shots": 2,
            },
        ],
    }
    out = run_eval(load_eval_config(None, [], raw=raw), log=lambda *_: None)
    res = json.loads((out / "results.json").read_text())["tasks"]["mc"]
    base = res["results"]["base"]
    assert set(base) == {"accuracy", "accuracy_norm", "accuracy_macro"}
    assert base["accuracy"]["n"] == 5 and set(base["accuracy"]["scores"]) <= {0.0, 1.0}
    subj = res["per_subject"]["base"]
    assert set(subj) == {"math", "geo", "misc"} and subj["math"]["n"] == 2
    macro = sum(s["accuracy"] for s in subj.values()) / 3
    assert base["accuracy_macro"]["value"] == pytest.approx(macro)
    assert res["settings"]["shots"] == 2 and res["settings"]["score"] == "letter"
    assert res["deltas"]["same"]["accuracy"]["ci95"] == [0.0, 0.0]
    assert (out / "predictions" / "mc.base.jsonl").is_file()


def test_mc_keys_rejected_on_other_task_types(tmp_path, files):
    data, _ = files
    raw = {
        "models": {"m": "tiny-llama"},
        "tasks": [{"name": "p", "type": "perplexity", "data": str(data), "shots": 2}],
    }
    with pytest.raises(StropError, match="multiple_choice tasks only"):
        load_eval_config(None, [], raw=raw)
