"""Preference stages end to end on tiny models (DESIGN.md §3): the ln 2 anchor in every
reference mode, precomputed ≡ live reference, frozen references stay bit-identical, one
packed forward ≡ separate forwards, batch x accum equivalence, exact resume, golden
trajectories for dpo/simpo/orpo/kto, and clear refusals."""

from __future__ import annotations

import math

import pytest
import torch

from strop.config import load_config
from strop.data.batching import Row, collate
from strop.data.dataset import build_datasets
from strop.errors import StropError
from strop.models.load import load_model
from strop.models.logps import per_document, target_documents, target_logps
from strop.train.loop import train
from strop.train.objectives import OBJECTIVES
from tests.helpers import check_golden, tiny_config, write_kto_jsonl, write_preference_jsonl

LORA = {"name": "lora", "r": 4, "alpha": 8}


def _cfg(tmp_path, stage="dpo", method=None, n=24, **sections):
    writer = write_kto_jsonl if stage == "kto" else write_preference_jsonl
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = writer(tmp_path / f"{stage}.jsonl", n=n, seed=5)
    train_opts = {"max_steps": 4, "batch_size": 4, "lr": 3e-3, **sections.pop("train", {})}
    raw = tiny_config(
        tmp_path / "run",
        data,
        stage=stage,
        method=method or {"name": "full"},
        train=train_opts,
        **sections,
    )
    return load_config(None, raw=raw)


@pytest.mark.parametrize(
    ("reference", "method"),
    [("precompute", None), ("model", None), ("adapter_off", LORA)],
)
def test_dpo_starts_at_ln2_in_every_reference_mode_and_learns(tmp_path, reference, method):
    cfg = _cfg(
        tmp_path, method=method, dpo={"reference": reference, "beta": 0.5}, train={"max_steps": 8}
    )
    hist = train(cfg).history
    # Live references score the very batch the policy scores: bit-equal log-probs, ln 2 to
    # fp32 rounding. Precomputed ones came from other batch shapes: fp32 reassociation noise
    # on sums of ~100 log-probs (about 1e-5) remains.
    tol = 1e-5 if reference == "precompute" else 1e-7
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=tol)
    assert hist[0]["rewards/margin"] == pytest.approx(0.0, abs=tol)
    assert hist[-1]["rewards/accuracy"] > 0.5 and hist[-1]["loss"] < math.log(2)


def _objective_and_rows(tmp_path, reference, method=None):
    cfg = _cfg(tmp_path, method=method, dpo={"reference": reference})
    from strop.models.transforms import parse_method

    transform, params = parse_method(cfg.method)
    torch.manual_seed(0)
    model, tok, _ = load_model(cfg.model.name, "fp32")
    model = transform.apply(model, params)
    data = build_datasets(cfg.data, "dpo", tok, 0)
    return OBJECTIVES["dpo"](model, cfg), data.train.rows, tok


def test_precomputed_reference_equals_live_reference(tmp_path):
    obj, rows, tok = _objective_and_rows(tmp_path, "precompute")
    obj.precompute_reference(rows, tok.pad_token_id, True, "cpu", torch.autograd.grad_mode.no_grad)
    ref_model, _, _ = load_model("tiny-llama", "fp32")
    obj.mode = "model"
    obj.set_reference_model(ref_model)
    for part in (rows[:8], rows[3:7], rows[5:6]):  # the precompute batches, and others
        batch = obj.collate(part, tok.pad_token_id, True)
        live = obj.reference_logps(batch).double()
        stored = torch.tensor(
            [[r.values["ref_0"], r.values["ref_1"]] for r in part], dtype=torch.float64
        )
        if part is rows[:8]:
            assert torch.equal(live, stored)  # same batch: exact
        torch.testing.assert_close(live.double(), stored, atol=1e-4, rtol=1e-6)


def test_one_packed_forward_equals_separate_forwards(tmp_path):
    obj, rows, tok = _objective_and_rows(tmp_path, "precompute")
    part = rows[:4]
    got = {}
    for doc_attention in (True, False):  # strop_docs SDPA, and the eager-style 4-D mask
        batch = obj.collate(part, tok.pad_token_id, doc_attention)
        lp, _ = target_logps(obj.model, batch, 16)
        got[doc_attention] = per_document(lp, target_documents(batch), len(part))
    separate = []
    for r in part:
        one = []
        for k in range(2):
            s = sum(r.doc_lens[:k])
            doc = Row(
                r.input_ids[s : s + r.doc_lens[k]], r.labels[s : s + r.doc_lens[k]], [r.doc_lens[k]]
            )
            batch = collate([doc], tok.pad_token_id, with_docs=True)
            lp, _ = target_logps(obj.model, batch, 16)
            one.append(lp.sum())
        separate.append(torch.stack(one))
    separate = torch.stack(separate)
    torch.testing.assert_close(got[True], separate, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(got[False], separate, atol=1e-4, rtol=1e-6)


def test_frozen_references_stay_bit_identical(tmp_path):
    base, _, _ = load_model("tiny-llama", "fp32")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    # reference: model: the resident reference never changes
    cfg = _cfg(tmp_path / "m", dpo={"reference": "model"})
    import strop.train.objectives.sequence as seq

    seen = []
    original = seq.SequenceObjective.set_reference_model

    def spy(self, ref):
        seen.append(ref)
        original(self, ref)

    seq.SequenceObjective.set_reference_model = spy
    try:
        train(cfg)
    finally:
        seq.SequenceObjective.set_reference_model = original
    for k, v in seen[0].state_dict().items():
        assert torch.equal(v, before[k]), k
    # reference: adapter_off: the base weights under the adapter never change
    cfg = _cfg(
        tmp_path / "a", method=LORA, dpo={"reference": "adapter_off"}, train={"save_merged": False}
    )
    res = train(cfg)
    tuned, _, _ = load_model("tiny-llama", "fp32", adapter=str(res.final_dir))
    base_after = tuned.get_base_model().state_dict()
    for k, v in before.items():
        key = k.replace(".weight", ".base_layer.weight")
        assert torch.equal(base_after.get(key, base_after.get(k)), v), k


def test_batch_times_accum_equivalence_for_dpo(tmp_path):
    runs = {}
    for bs, acc in ((4, 1), (1, 4), (2, 2)):
        cfg = _cfg(
            tmp_path / f"{bs}x{acc}", train={"batch_size": bs, "grad_accum": acc, "max_steps": 3}
        )
        runs[bs] = [(h["loss"], h["grad_norm"], h["rewards/margin"]) for h in train(cfg).history]
    for other in (1, 2):
        for a, b in zip(runs[4], runs[other], strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_adapter_off_is_refused_where_it_would_be_wrong(tmp_path):
    with pytest.raises(StropError, match="adapter_off needs an adapter method"):
        train(_cfg(tmp_path / "f", dpo={"reference": "adapter_off"}))
    method = {**LORA, "modules_to_save": ["lm_head"]}
    with pytest.raises(StropError, match="trains outside the adapter"):
        train(_cfg(tmp_path / "s", method=method, dpo={"reference": "adapter_off"}))


def test_sft_data_for_a_preference_stage_is_a_clear_error(tmp_path):
    from tests.helpers import write_chat_jsonl

    cfg = _cfg(tmp_path)
    cfg.data.train = str(write_chat_jsonl(tmp_path / "chat.jsonl"))
    with pytest.raises(StropError, match="looks like messages data, but this stage trains on"):
        train(cfg)


GOLDEN_CASES = {
    "dpo-full": ("dpo", None, {"dpo": {"beta": 0.2}}),
    "dpo-lora-ipo": ("dpo", {**LORA, "init": "gaussian"}, {"dpo": {"loss": "ipo", "beta": 0.5}}),
    "simpo-full": ("simpo", None, {}),
    "orpo-full": ("orpo", None, {}),
    "kto-full": ("kto", None, {"kto": {"undesirable_weight": 1.5}}),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_trajectory(tmp_path, case):
    stage, method, sections = GOLDEN_CASES[case]
    cfg = _cfg(
        tmp_path,
        stage,
        method,
        n=40,
        train={"max_steps": 12, "batch_size": 2, "grad_accum": 2, "warmup": 2, "seed": 3},
        **sections,
    )
    history = train(cfg).history
    keys = ("loss", "grad_norm", "tokens", "rewards/margin" if stage != "kto" else "kl")
    got = [{k: h[k] for k in ("step", *keys)} for h in history]
    check_golden(case, got, tuple(k for k in keys if k != "tokens"))
    assert len(got) == 12
    assert got[-1]["loss"] < got[0]["loss"]


def test_a_reference_with_another_vocabulary_is_refused(tmp_path):
    cfg = _cfg(tmp_path, dpo={"reference": "model", "reference_model": "tiny-qwen2"})
    with pytest.raises(StropError, match="reference must share the policy's tokenizer"):
        train(cfg)
