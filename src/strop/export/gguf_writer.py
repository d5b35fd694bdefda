"""HF safetensors dir -> one GGUF file, strop's own converter on the ``gguf`` package's writer.

The GGUF file is the model's whole description for llama.cpp and the runtimes built on it
(Ollama, LM Studio) and for transformers' GGUF loader: hyper-parameters, tokenizer, special ids
and chat template live in its key/value header, tensors follow under GGUF's standard names
(``gguf.TensorNameMap``); the tokenizer keys come from ``gguf_vocab``. Tensors are read,
converted and written one at a time, so peak memory is one tensor plus its quantised copy, never
the model. The file is written beside ``out`` under a temporary name and renamed into place only
once complete.

Llama family only for now: HF ``llama`` and ``mistral`` (GGUF arch ``llama``) and ``qwen2``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType as FT

from strop.errors import StropError, StropRuntimeError, disk_full
from strop.export.gguf_vocab import tokenizer_meta
from strop.files import output_file

# quant name -> (tensor type of 2-D weights, general.file_type)
QUANTS: dict[str, tuple[Q, FT]] = {
    "f32": (Q.F32, FT.ALL_F32),
    "f16": (Q.F16, FT.MOSTLY_F16),
    "bf16": (Q.BF16, FT.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, FT.MOSTLY_Q4_0),
}

# HF model_type -> (GGUF arch, whether q/k rows go to GGML's rotary layout). llama.cpp runs
# Llama's rotary embedding on adjacent pairs (x0, x1), (x2, x3)...; HF Llama on halves
# (x_i, x_{i+d/2}). The llama arch therefore stores q/k rows interleaved, and transformers'
# GGUF loader un-permutes them for "llama" only (LlamaTensorProcessor); llama.cpp runs qwen2
# with the "neox" (halves) rotary, so its q/k stay as HF has them.
ARCHS: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "mistral": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
}

SAFETENSORS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class _Planned:
    hf: str
    gguf: str
    shape: tuple[int, ...]
    ggml: Q
    rotary_heads: int | None  # permute rows to GGML's rotary layout over this many heads

    @property
    def nbytes(self) -> int:
        return math.prod(gguf.quant_shape_to_byte_shape(self.shape, self.ggml))


def write_gguf(model_dir: Path, out: Path, quant: str = "f16", lineage: dict | None = None) -> dict:
    """Write the HF model at ``model_dir`` as one GGUF file ``out``; return a summary dict.

    ``quant``: f32 | f16 | bf16 | q8_0 | q4_0 for 2-D weights; 1-D tensors (norms, biases) stay
    f32. ``lineage``: string facts written as ``strop.<key>`` (base_model, adapter,
    dataset_sha256, ...), so the file says where it came from."""
    model_dir, out = Path(model_dir), output_file(out, "output")
    qtype, file_type = _check_quant(quant)
    config = _read_config(model_dir)
    model_type = config.get("model_type")
    if model_type not in ARCHS:
        raise StropError(
            f"{model_dir / 'config.json'}: model_type {model_type!r} cannot be exported to GGUF "
            f"yet; supported: {', '.join(ARCHS)}"
        )
    arch, permute = ARCHS[model_type]
    try:
        hparams = _hparams(config, model_dir)
    except KeyError as exc:
        raise StropError(
            f"{model_dir / 'config.json'}: no {exc.args[0]!r}, which GGUF export needs"
        ) from None
    tok = tokenizer_meta(model_dir, config["vocab_size"])
    lineage = _check_lineage(lineage or {})
    source = _weights(model_dir)
    plan = _plan(source, config, arch, permute, qtype, model_dir)

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
    _add_metadata(writer, str(lineage.get("name") or model_dir.name), file_type, hparams, tok)
    for key, value in lineage.items():
        writer.add_string(f"strop.{key}", value)
    for p in plan:
        # the float32 dtype is ignored once raw_dtype names the stored type
        writer.add_tensor_info(p.gguf, p.shape, np.float32, p.nbytes, raw_dtype=p.ggml)
    _write_atomically(writer, out, plan, source, tok["merges"])

    types: dict[str, int] = {}
    for p in plan:
        types[p.ggml.name] = types.get(p.ggml.name, 0) + 1
    return {
        "path": str(out),
        "arch": gguf.MODEL_ARCH_NAMES[arch],
        "quant": quant.lower(),
        "tensors": len(plan),
        "bytes": out.stat().st_size,
        "types": types,
        # 2-D tensors whose rows do not split into whole quant blocks stay f16
        "f16_fallback": [p.gguf for p in plan if p.ggml == Q.F16 and qtype != Q.F16],
        "tied_embeddings": not any(p.gguf == "output.weight" for p in plan),
        "pre_tokenizer": tok["pre"],
        "eos_token_id": tok["eos"],
        "eog_token_ids": tok["eog"],
    }


def _weights(model_dir: Path):
    from strop.merge.io import SafetensorsDir

    if not any((model_dir / f).exists() for f in ("model.safetensors", SAFETENSORS_INDEX)):
        raise StropError(
            f"{model_dir}: no safetensors weights (model.safetensors or its index); strop export "
            "reads safetensors only: load the model and save it with save_pretrained first"
        )
    return SafetensorsDir(model_dir, "export")


def _write_atomically(writer, out: Path, plan: list[_Planned], source, merges: list) -> None:
    """Write beside ``out`` under a temporary name (same filesystem, so the rename is atomic)
    and rename only once complete: ``out`` is the old file or the whole new one, never a part."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        writer.open_output_file(tmp)
        _write_tensors(writer, plan, source, merges)
        writer.close()
        tmp.replace(out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and (
            msg := disk_full(exc, out.parent, sum(p.nbytes for p in plan))
        ):
            raise StropRuntimeError(f"writing {out}: {msg}") from exc
        raise


def _check_quant(quant: str) -> tuple[Q, FT]:
    key = str(quant).lower()
    if key in QUANTS:
        return QUANTS[key]
    guess = difflib.get_close_matches(key, list(QUANTS), n=1, cutoff=0.0)
    later = " (k-quants come in a later strop version)" if "_k" in key else ""
    raise StropError(
        f"unknown GGUF quant {quant!r}{later}; did you mean {guess[0]!r}? "
        f"Supported: {', '.join(QUANTS)}"
    )


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise StropError(f"{model_dir}: no config.json; give an HF model directory to export")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StropError(f"{path}: not readable JSON ({exc})") from None


def _hparams(config: dict, model_dir: Path) -> dict:
    """The architecture keys llama.cpp reads, from config.json; what it cannot run is refused."""
    where = model_dir / "config.json"
    if config.get("hidden_act", "silu") not in ("silu", "swish"):
        raise StropError(f"{where}: hidden_act {config['hidden_act']!r}; GGUF llama needs silu")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        # llama.cpp needs extra keys (and for llama3 a rope_freqs tensor): a later increment
        raise StropError(f"{where}: rope scaling {rope_type!r} is not supported by GGUF export yet")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    context = config["max_position_embeddings"]
    window = config.get("sliding_window")
    if window and (config["model_type"] == "mistral" or config.get("use_sliding_window")):
        # GGUF llama has no sliding window; within the window the two attentions are the same
        context = min(context, window)
    return {
        "context_length": context,
        "embedding_length": config["hidden_size"],
        "block_count": config["num_hidden_layers"],
        "feed_forward_length": config["intermediate_size"],
        "head_count": heads,
        "head_count_kv": config.get("num_key_value_heads") or heads,
        "layer_norm_rms_eps": config.get("rms_norm_eps", 1e-6),
        "rope_freq_base": config.get("rope_theta") or rope.get("rope_theta") or 10000.0,
        "rope_dimension_count": head_dim,
        "vocab_size": config["vocab_size"],
        # llama.cpp assumes head_dim = hidden / heads unless the file says otherwise
        "key_length": head_dim if head_dim * heads != config["hidden_size"] else None,
    }


def _plan(source, config: dict, arch, permute: bool, qtype: Q, model_dir: Path) -> list[_Planned]:
    """Every tensor's GGUF name, shape and type, known before any data is read: the writer puts
    all tensor infos in the header ahead of the data."""
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    tied = bool(config.get("tie_word_embeddings"))
    heads = {"attn_q": config["num_attention_heads"]}
    heads["attn_k"] = config.get("num_key_value_heads") or heads["attn_q"]
    plan = []
    for hf in source.names():
        if hf.endswith("rotary_emb.inv_freq") or (tied and hf == "lm_head.weight"):
            continue  # recomputed by every runtime / the same matrix as token_embd
        gname = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise StropError(
                f"{model_dir}: tensor {hf!r} has no GGUF name for {config['model_type']}; "
                "the export would drop it, so it stops instead"
            )
        shape = source.info(hf).shape
        ggml = Q.F32 if len(shape) == 1 else qtype
        if ggml != Q.F32 and shape[-1] % gguf.GGML_QUANT_SIZES[ggml][0]:
            ggml = Q.F16  # rows that do not split into whole blocks (the summary lists them)
        leaf = gname.split(".")[-2]
        rotary = heads.get(leaf) if permute else None
        plan.append(_Planned(hf, gname, tuple(shape), ggml, rotary))
    # llama.cpp does not care about order; embeddings, blocks by number, then head reads well
    return sorted(plan, key=lambda p: _natural(p.gguf))


def _natural(name: str) -> tuple:
    parts = name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), name)
    return (0 if parts[0] == "token_embd" else 2, 0, name)


def rotary_to_ggml(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows from HF's halves layout to GGML's interleaved pairs: row
    ``h, i`` of the first half and row ``h, i`` of the second become rows ``2i`` and ``2i+1``.
    The inverse of what transformers' GGUF loader does to llama q/k (works for biases too)."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _convert(p: _Planned, source) -> np.ndarray:
    w = source.get(p.hf).float().numpy()
    if p.rotary_heads:
        w = rotary_to_ggml(w, p.rotary_heads)
    return gguf.quants.quantize(w, p.ggml)


def _write_tensors(writer, plan: list[_Planned], source, merges: list[str]) -> None:
    """Header, KV and tensor infos, then the tensors one at a time (the infos, added before
    the file opened, hold every offset, so no tensor waits in memory for the next)."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    if not merges:
        _append_empty_merges(writer)
    writer.write_ti_data_to_file()
    for p in plan:
        data = _convert(p, source)
        if data.nbytes != p.nbytes:
            raise RuntimeError(f"{p.gguf}: {data.nbytes} bytes, planned {p.nbytes}")
        writer.write_tensor_data(data)


def _append_empty_merges(writer) -> None:
    """Write ``tokenizer.ggml.merges`` as an empty string array.

    llama.cpp refuses a "gpt2" tokenizer without a merges key, but a byte-level vocabulary can
    have no merges (the tiny models), and the gguf package's writer cannot encode an empty
    array (it takes the element type from the first element). So the entry is appended in the
    GGUF v3 layout by hand after the writer's KV section, and the header's KV count, a uint64
    at byte 16 (after magic, version and the tensor count), is raised by one."""
    fout = writer.fout[0]
    key = gguf.Keys.Tokenizer.MERGES.encode()
    fout.write(struct.pack("<Q", len(key)) + key)
    fout.write(struct.pack("<IIQ", gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, 0))
    end = fout.tell()
    fout.seek(16)
    fout.write(struct.pack("<Q", len(writer.kv_data[0]) + 1))
    fout.seek(end)


def _add_metadata(writer, name: str, file_type: FT, hp: dict, tok: dict) -> None:
    writer.add_name(name)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["head_count"])
    writer.add_head_count_kv(hp["head_count_kv"])
    writer.add_layer_norm_rms_eps(float(hp["layer_norm_rms_eps"]))
    writer.add_rope_freq_base(float(hp["rope_freq_base"]))
    writer.add_rope_dimension_count(hp["rope_dimension_count"])
    writer.add_vocab_size(hp["vocab_size"])
    if hp["key_length"] is not None:
        writer.add_key_length(hp["key_length"])
        writer.add_value_length(hp["key_length"])
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])  # skipped when empty: _append_empty_merges
    for key, adder in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("eot", writer.add_eot_token_id),
        ("pad", writer.add_pad_token_id),
        ("unk", writer.add_unk_token_id),
    ):
        if tok[key] is not None:
            adder(tok[key])
    writer.add_add_bos_token(tok["add_bos"])
    writer.add_add_eos_token(tok["add_eos"])
    writer.add_add_space_prefix(False)
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])
    # GGUF has one eos and one eot key; the whole set stays on record here
    writer.add_array("strop.eog_token_ids", tok["eog"])


def _check_lineage(lineage: dict) -> dict[str, str]:
    out = {}
    for key, value in lineage.items():
        if not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)*", str(key)):
            raise StropError(f"lineage key {key!r}: use lower-case letters, digits, _ and .")
        if value is not None and str(value):
            out[str(key)] = str(value)
    return out
