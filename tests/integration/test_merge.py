"""`strop merge` end to end on tiny-llama: every method streamed ≡ in memory bit for bit,
outputs transformers loads, LoRA folding ≡ the unmerged adapter, run dirs and checkpoints,
the manifest, bad inputs, the CLI and the weight search."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from strop.config import load_config
from strop.errors import StropError
from strop.merge.config import load_merge_config
from strop.merge.inputs import sha256
from strop.merge.run import merge_in_memory, run_merge
from strop.tiny import build_tiny_model
from strop.train.loop import train
from tests.helpers import tiny_config, write_chat_jsonl, write_text_jsonl

IDS = torch.randint(0, 250, (2, 13), generator=torch.Generator().manual_seed(0))


def read_weights(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def logits(model_dir: Path, adapter: Path | None = None) -> torch.Tensor:
    from strop.models.load import load_model

    model, _, _ = load_model(str(model_dir), "fp32", adapter=str(adapter) if adapter else None)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def merge(tmp: Path, **tree) -> Path:
    tree.setdefault("output", {})
    tree["output"].setdefault("dir", str(tmp / "out"))
    tree["output"]["overwrite"] = True
    cfg, _, _ = load_merge_config(None, raw=tree)
    return run_merge(cfg, log=lambda m: None)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_llama_dir):
    """tiny-llama (seed 0, the base) and two 'fine-tunes' of it: seeds 1 and 2."""
    tmp = tmp_path_factory.mktemp("merge_zoo")
    for seed in (1, 2):
        build_tiny_model("llama", tmp / f"m{seed}", seed=seed)
    return tmp


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full and a LoRA run of 4 steps, checkpoints at every step (keep 3)."""
    tmp = tmp_path_factory.mktemp("merge_runs")
    data = write_chat_jsonl(tmp / "chat.jsonl", n=16)
    out = {}
    for key, method in {"full": {"name": "full"}, "lora": {"name": "lora", "r": 4}}.items():
        raw = tiny_config(
            tmp / key,
            data,
            method=method,
            train={"max_steps": 4, "save_every": 1, "keep_last": 3, "lr": 5e-2},
        )
        train(load_config(None, raw=raw))
        out[key] = tmp / key
    return out


METHOD_TREES = {
    "linear": {"models": [{"model": "A", "weight": 0.3}, {"model": "B", "weight": 0.9}]},
    "task_arithmetic": {
        "base": "tiny-llama",
        "models": [{"model": "A", "weight": 0.5}, {"model": "B", "weight": [0.2, 0.7]}],
    },
    "slerp": {
        "models": ["A", "B"],
        "params": {"t": [{"pattern": "*mlp*", "value": 0.2}, {"value": [0.1, 0.9]}]},
    },
    "ties": {
        "base": "tiny-llama",
        "models": [{"model": "A", "density": 0.4}, {"model": "B", "density": 0.6}],
        "params": {"scale": 0.8},
    },
    "dare_linear": {
        "base": "tiny-llama",
        "models": [{"model": "A", "density": 0.5, "weight": 0.6}, {"model": "B", "density": 0.3}],
        "params": {"seed": 3},
    },
    "dare_ties": {
        "base": "tiny-llama",
        "models": [{"model": "A", "density": 0.5}, {"model": "B", "density": 0.5}],
    },
}


def _fill(tree: dict, a: Path, b: Path) -> dict:
    tree = json.loads(json.dumps(tree))
    tree["models"] = [
        {**m, "model": str(a if m["model"] == "A" else b)}
        if isinstance(m, dict)
        else str(a if m == "A" else b)
        for m in tree["models"]
    ]
    return tree


@pytest.mark.parametrize("method", list(METHOD_TREES))
def test_streamed_merge_equals_in_memory_bit_for_bit(zoo, tiny_llama_dir, tmp_path, method):
    tree = {"method": method, **_fill(METHOD_TREES[method], zoo / "m1", zoo / "m2")}
    # small shards: the writer must split the model over several files and an index
    tree["output"] = {"dir": str(tmp_path / "out"), "shard_size": 40_000}
    out = merge(tmp_path, **tree)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert (out / "model.safetensors.index.json").exists()
    cfg, _, _ = load_merge_config(None, raw=tree)
    sds = [load_file(zoo / "m1" / "model.safetensors"), load_file(zoo / "m2" / "model.safetensors")]
    base = load_file(tiny_llama_dir / "model.safetensors") if cfg.base else None
    ref = merge_in_memory(cfg, sds, base, n_layers=2)
    got = read_weights(out)
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    # and the merge did something: it equals neither input
    assert not torch.equal(
        got["model.layers.0.mlp.up_proj.weight"], sds[0]["model.layers.0.mlp.up_proj.weight"]
    )


def test_output_loads_with_transformers_and_keeps_the_tokenizer(zoo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge(
        tmp_path,
        method="linear",
        models=[str(zoo / "m1"), str(zoo / "m2")],
        output={"dtype": "bf16"},
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=IDS).logits).all()
    tok, ref = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(zoo / "m1")
    assert tok.get_vocab() == ref.get_vocab()
    assert tok.chat_template == ref.chat_template


def test_manifest_records_inputs_hashes_method_and_version(zoo, tiny_llama_dir, tmp_path):
    import strop

    out = merge(
        tmp_path,
        method="ties",
        base="tiny-llama",
        models=[{"model": str(zoo / "m1"), "name": "one", "density": 0.5}, str(zoo / "m2")],
    )
    man = json.loads((out / "merge_manifest.json").read_text())
    assert man["method"] == "ties" and man["strop_version"] == strop.__version__
    assert man["params"] == {"scale": 1.0}
    assert [i["name"] for i in man["inputs"]] == ["one", "m2"]
    assert man["inputs"][0]["density"] == 0.5
    st = str(zoo / "m1" / "model.safetensors")
    assert man["inputs"][0]["files"][st] == sha256(Path(st))
    assert man["base"]["path"] == str(tiny_llama_dir)
    assert man["output"]["files"]["model.safetensors"] == sha256(out / "model.safetensors")
    assert man["output"]["tensors"] == 21


def _lora_adapter(base_dir: Path, out: Path, **kw) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **kw)
    peft_model = get_peft_model(model, cfg)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:  # nonzero and large enough to move the logits visibly
            p.data.normal_(0, 0.2)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "extra", [{}, {"use_rslora": True, "alpha_pattern": {"q_proj": 16}, "rank_pattern": {}}]
)
def test_lora_adapter_folded_equals_unmerged_logits(tiny_llama_dir, tmp_path, extra):
    adapter = _lora_adapter(tiny_llama_dir, tmp_path / "adapter", **extra)
    out = merge(tmp_path, method="linear", models=[str(adapter)])
    ref = logits(tiny_llama_dir, adapter)
    assert (ref - logits(tiny_llama_dir)).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(logits(out), ref, rtol=0, atol=1e-5)
    man = json.loads((out / "merge_manifest.json").read_text())
    assert man["inputs"][0]["kind"] == "adapter"


def test_mixed_inputs_adapter_hf_dir_and_run_dir(zoo, runs, tiny_llama_dir, tmp_path):
    adapter = _lora_adapter(tiny_llama_dir, tmp_path / "adapter")
    out = merge(
        tmp_path,
        method="task_arithmetic",
        base="tiny-llama",
        models=[str(adapter), str(zoo / "m1"), str(runs["full"])],
    )
    kinds = [i["kind"] for i in json.loads((out / "merge_manifest.json").read_text())["inputs"]]
    assert kinds == ["adapter", "hf", "run"]
    # θ = base + Σ(θᵢ − base), checked on one tensor from the inputs' own files
    name = "model.layers.1.mlp.down_proj.weight"
    base = load_file(tiny_llama_dir / "model.safetensors")[name]
    full = load_file(runs["full"] / "final" / "model.safetensors")[name]
    m1 = load_file(zoo / "m1" / "model.safetensors")[name]
    got = read_weights(out)[name]
    from strop.models.load import load_model

    folded = load_model(str(tiny_llama_dir), "fp32", adapter=str(adapter))[0].merge_and_unload()
    lora = folded.state_dict()[name]
    torch.testing.assert_close(
        got, base + (lora - base) + (m1 - base) + (full - base), rtol=0, atol=1e-5
    )


def test_checkpoint_average_of_a_full_run(runs, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    run = runs["full"]
    last1 = merge(
        tmp_path / "a", method="checkpoint_average", models=[str(run)], params={"last": 1}
    )
    final = load_file(run / "final" / "model.safetensors")
    got = read_weights(last1)
    assert all(torch.equal(got[k], final[k]) for k in final)  # step-4 is the final weights
    avg = merge(tmp_path / "b", method="checkpoint_average", models=[str(run)], params={"last": 2})
    dcp_to_torch_save(run / "checkpoints" / "step-3", tmp_path / "s3.pt")
    s3 = torch.load(tmp_path / "s3.pt")["model"]
    step3 = {k.removeprefix("model."): v for k, v in s3.items()}
    got = read_weights(avg)
    for k in final:
        torch.testing.assert_close(got[k], (step3[k] + final[k]) / 2, rtol=0, atol=1e-7)
    with pytest.raises(StropError, match="5 checkpoints asked for, .* has 3"):
        merge(tmp_path / "c", method="checkpoint_average", models=[str(run)], params={"last": 5})


def test_checkpoint_average_of_a_lora_run_folds_each_checkpoint(runs, tiny_llama_dir, tmp_path):
    run = runs["lora"]
    out = merge(tmp_path, method="checkpoint_average", models=[str(run)], params={"last": 1})
    torch.testing.assert_close(
        logits(out), logits(tiny_llama_dir, run / "final"), rtol=0, atol=1e-5
    )


# ---- bad input -----------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_input_is_named(zoo, tmp_path):
    with pytest.raises(StropError, match=r"models.1.model: not found: .*nope"):
        merge(tmp_path, method="linear", models=[str(zoo / "m1"), str(tmp_path / "nope")])


@pytest.mark.parametrize("kind", ["PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "bottleneck"])
def test_unmergeable_adapters_are_refused_with_the_reason(zoo, tiny_llama_dir, tmp_path, kind):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    if kind == "bottleneck":
        (adapter / "strop_adapter.json").write_text(json.dumps({"method": "adapter"}))
        want = "bottleneck adapters .* cannot be merged: they are nonlinear"
    else:
        cfg = {"peft_type": kind, "base_model_name_or_path": str(tiny_llama_dir)}
        (adapter / "adapter_config.json").write_text(json.dumps(cfg))
        want = f"a {kind} adapter, which cannot be merged: its virtual tokens"
    with pytest.raises(StropError, match=rf"models.1.model: .*{want}"):
        merge(tmp_path / "out", method="linear", models=[str(zoo / "m1"), str(adapter)])


def test_mismatched_shapes_are_named(zoo, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "wide"
    cfg = LlamaConfig.from_pretrained(zoo / "m1")
    cfg.intermediate_size = 96
    LlamaForCausalLM(cfg).save_pretrained(other)
    for f in (zoo / "m1").glob("tokenizer*"):
        shutil.copy(f, other)
    shutil.copy(zoo / "m1" / "chat_template.jinja", other)
    with pytest.raises(
        StropError, match=r"down_proj.weight.: shape \[64, 128\] in m1 but \[64, 96\] in wide"
    ):
        merge(tmp_path, method="linear", models=[str(zoo / "m1"), str(other)])


def test_missing_tensor_is_named(zoo, tmp_path):
    short = _copy(zoo / "m2", tmp_path / "short")
    sd = load_file(short / "model.safetensors")
    del sd["model.layers.1.mlp.gate_proj.weight"]
    save_file(sd, short / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(StropError, match="short lacks tensor.*layers.1.mlp.gate_proj.* that m1"):
        merge(tmp_path, method="linear", models=[str(zoo / "m1"), str(short)])


def test_mismatched_vocabularies_are_refused_naming_the_token(zoo, tmp_path):
    from transformers import AutoTokenizer

    other = _copy(zoo / "m2", tmp_path / "more-tokens")
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|tool|>"])
    tok.save_pretrained(other)
    with pytest.raises(StropError, match=r"tokenizers differ .*only more-tokens has '<\|tool\|>'"):
        merge(tmp_path, method="linear", models=[str(zoo / "m1"), str(other)])


def test_chat_template_must_be_chosen_when_they_differ(zoo, tmp_path):
    from transformers import AutoTokenizer

    other = _copy(zoo / "m2", tmp_path / "chatml")
    tok = AutoTokenizer.from_pretrained(other)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(other)
    models = [str(zoo / "m1"), str(other)]
    with pytest.raises(StropError, match="chat templates differ.*output.tokenizer_from"):
        merge(tmp_path, method="linear", models=models)
    out = merge(tmp_path, method="linear", models=models, output={"tokenizer_from": "chatml"})
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template


def test_nan_input_is_refused_naming_the_tensor(zoo, tmp_path):
    bad = _copy(zoo / "m2", tmp_path / "nan")
    sd = load_file(bad / "model.safetensors")
    sd["model.layers.1.self_attn.o_proj.weight"][3, 5] = float("nan")
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        StropError, match=r"nan: tensor 'model.layers.1.self_attn.o_proj.weight' holds NaN"
    ):
        merge(tmp_path, method="linear", models=[str(zoo / "m1"), str(bad)])
    assert not (tmp_path / "out").exists()  # nothing half-written left behind


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"method": "slerp", "models": ["a"]}, "slerp takes exactly 2 models"),
        ({"method": "ties", "models": ["a", "b"]}, "base: ties needs the base model"),
        (
            {"method": "linear", "models": ["a"], "params": {"t": 0.3}},
            "params.t: not used by method linear",
        ),
        (
            {"method": "linear", "models": [{"model": "a", "density": 0.3}]},
            "models.0.density: not used",
        ),
        (
            {"method": "linear", "models": ["a"], "output": {"dri": "x"}},
            "did you mean 'output.dir'",
        ),
        ({"method": "mean", "models": ["a"]}, "unknown method 'mean'"),
    ],
)
def test_config_errors_name_the_key(tree, message):
    with pytest.raises(StropError, match=message):
        load_merge_config(None, raw=tree)


# ---- CLI and search ------------------------------------------------------------------------


def strop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "strop.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_exit_codes(zoo, tmp_path):
    cfg = tmp_path / "merge.yaml"
    tree = {
        "method": "slerp",
        "models": [str(zoo / "m1"), str(zoo / "m2")],
        "output": {"dir": str(tmp_path / "o")},
    }
    cfg.write_text(yaml.safe_dump(tree))
    ok = strop("merge", str(cfg), "params.t=0.25")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "merge_manifest.json").exists()
    assert json.loads((tmp_path / "o" / "merge_manifest.json").read_text())["params"]["t"] == 0.25
    again = strop("merge", str(cfg))  # output exists: refused, not overwritten
    assert again.returncode == 2 and "output.overwrite" in again.stderr
    bad = strop(
        "merge", str(cfg), "models.1.model=" + str(tmp_path / "missing"), "output.overwrite=true"
    )
    assert bad.returncode == 2 and "models.1.model: not found" in bad.stderr
    assert "Traceback" not in bad.stderr
    typo = strop("merge", str(cfg), "params.tt=0.3")
    assert typo.returncode == 2 and "did you mean 'params.t'" in typo.stderr


def test_search_keeps_the_best_candidate(runs, tiny_llama_dir, tmp_path):
    text = write_text_jsonl(tmp_path / "probe.jsonl", n=8, seed=3)
    chat = runs["full"].parent / "chat.jsonl"
    tree = {
        "method": "slerp",
        "models": [str(tiny_llama_dir), str(runs["full"])],
        "output": {"dir": str(tmp_path / "best")},
        "search": {
            "space": {"params.t": [0.0, 0.5, 1.0]},
            "tasks": [
                {"name": "fit", "type": "perplexity", "data": str(chat)},
                {"name": "probe", "type": "perplexity", "data": str(text), "kind": "text"},
            ],
            "objective": "fit/loss",
            "mode": "min",
        },
    }
    cfg, raw, source = load_merge_config(None, raw=tree)
    from strop.merge.search import run_search

    result = run_search(cfg, raw, source, log=lambda m: None)
    losses = {r["values"]["params.t"]: r["metrics"]["fit/loss"] for r in result.rows}
    assert len(losses) == 3 and "probe/ppl" in result.rows[0]["metrics"]
    assert len(set(losses.values())) == 3  # the candidates really differ
    best_t = min(losses, key=losses.get)
    assert result.best["values"]["params.t"] == best_t
    # the kept model is that candidate: equal to a direct merge at its t, bit for bit
    direct = merge(tmp_path / "direct", method="slerp", models=tree["models"], params={"t": best_t})
    want, got = read_weights(direct), read_weights(result.best_dir)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert result.table_md.exists() and result.plot.exists()
    assert "**(best)**" in result.table_md.read_text()
    assert not (tmp_path / "best-candidates").exists()
