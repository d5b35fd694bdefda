"""`strop export` end to end on tiny models: the merged `hf` dir equals the adapter applied on
the fly, GGUF files load back through transformers with the measured quality in the report,
generation_config.json lists the end-of-turn ids, and bad input is one sentence with nothing
written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from strop.errors import StropError
from strop.export.run import ExportRequest, run_export
from strop.models.load import load_model
from tests.helpers import strop_error


def _data(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
        for w in ("alpha beta", "one two three", "red green blue", "left right")
    ]
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def lora_adapter(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _, _ = load_model(str(tiny_llama_dir), "fp32")
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, cfg)
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_merged_hf_export_equals_the_adapter_on_the_fly(tiny_llama_dir, lora_adapter, tmp_path):
    out = tmp_path / "export"
    report = run_export(
        ExportRequest(str(lora_adapter), out, ["hf", "gguf"], ["f32", "q8_0"], _data(tmp_path)),
        log=lambda m: None,
    )
    on_the_fly, tok, _ = load_model(str(tiny_llama_dir), "fp32", adapter=str(lora_adapter))
    merged = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32)
    ids = torch.tensor([tok("one two three four five six")["input_ids"]])
    with torch.no_grad():
        want = on_the_fly(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert want.abs().max() > 0.1  # the adapter is not a no-op on this input
    torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=0)

    # every end-of-turn id is an eos of the exported generation config
    gen = json.loads((out / "hf" / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|eot_id|>") in gen["eos_token_id"]  # Llama-3 template
    assert report["end_of_turn_ids"] == gen["eos_token_id"]

    # f32 GGUF: the merged model, read back by transformers' loader; q8_0 close to it
    f32 = report["targets"]["gguf-f32"]["quality"]
    q8 = report["targets"]["gguf-q8_0"]["quality"]
    assert f32["top1_agreement"] == 1.0 and f32["kl_mean"] < 1e-9
    assert 0 < q8["kl_mean"] < 1e-2 and q8["top1_agreement"] > 0.9
    assert not q8["flagged"] and q8["positions"] > 20
    md = (out / "export_report.md").read_text()
    assert "gguf-q8_0" in md and report["lineage"]["base_model"] in md
    assert (out / "gguf" / "adapter-q8_0.gguf").stat().st_size == report["targets"]["gguf-q8_0"][
        "bytes"
    ]


def test_cli_export_flags_degradation_and_refuses_bad_input(tmp_path):
    data = _data(tmp_path)
    out = tmp_path / "x"
    cmd = [sys.executable, "-m", "strop.cli", "export", "tiny-qwen2", "--to", "gguf"]
    cmd += ["--quant", "q4_0", "--output", str(out), "--data", str(data)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (out / "hf").exists() and (out / "gguf" / "tiny-qwen2-q4_0.gguf").is_file()
    # any perplexity change counts as degradation at bound -100%: exit 1, files kept
    again = cmd[:-4] + ["--output", str(tmp_path / "y"), "--data", str(data)]
    again += ["--max-ppl-increase", "-1", "--fail-on-degradation"]
    done = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "gguf-q4_0: perplexity rose" in done.stderr
    assert (tmp_path / "y" / "export_report.json").is_file()

    msg = strop_error(
        ["export", "tiny-llama", "--quant", "q4_1x", "--output", str(tmp_path / "z")], 2
    )
    assert "q4_1x" in msg and "did you mean" in msg
    # the rest in process: the same check_request runs before any model work
    for req, words in [
        (ExportRequest("tiny-llama", tmp_path / "z", ["onnx"]), ("--to", "onnx")),
        (ExportRequest("tiny-llama", out), ("not an empty directory",)),
        (ExportRequest(str(tmp_path / "nothing"), tmp_path / "z"), ("not found",)),
        (ExportRequest("tiny-llama", tmp_path / "z", data=tmp_path / "no.jsonl"), ("--data",)),
    ]:
        with pytest.raises(StropError) as err:
            run_export(req, log=lambda m: None)
        assert all(w in str(err.value) for w in words)
    assert not (tmp_path / "z").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
