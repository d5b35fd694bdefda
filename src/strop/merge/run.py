"""`strop merge`: open the inputs, check they can be merged, stream every tensor through the
method, write an HF dir (safetensors shards, config, tokenizer) and merge_manifest.json."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import strop
from strop.errors import StropError
from strop.merge.checkpoints import checkpoint_sources
from strop.merge.config import MergeConfig
from strop.merge.inputs import Input, chat_template, open_input, sha256, vocab_mismatch
from strop.merge.io import ShardWriter, Source, StateDictSource, TensorInfo
from strop.merge.methods import MERGE_METHODS, MergeMethod
from strop.merge.params import ParamResolver
from strop.quiet import quiet_transformers
from strop.train.artifacts import atomic_dir

OUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def open_all(cfg: MergeConfig, tmp: list) -> tuple[list[Input], Input | None]:
    """The inputs (k checkpoints for checkpoint_average) and the base, if the method has one."""
    if cfg.method == "checkpoint_average":
        spec = cfg.models[0]
        run_dir = Path(spec.model)
        if not run_dir.is_dir():
            raise StropError(f"models.0.model: not found: {spec.model}")
        sources, base_dir = checkpoint_sources(run_dir, cfg.params.last, spec.name)
        tok_dir = (
            run_dir / "final"
            if (run_dir / "final" / "tokenizer_config.json").exists()
            else base_dir
        )
        inputs = [
            Input(
                s.label, str(s.ckpt), "checkpoint", s, base_dir, tok_dir, sorted(s.ckpt.iterdir())
            )
            for s in sources
        ]
        return inputs, None
    inputs = [
        open_input(s.model, s.name, f"models.{i}.model", tmp) for i, s in enumerate(cfg.models)
    ]
    base = open_input(cfg.base, "base", "base", tmp) if cfg.base else None
    return inputs, base


def check_compatible(inputs: list[Input], base: Input | None) -> list[str]:
    """Same tensor names and shapes everywhere; returns the tensor names in output order."""
    everyone = ([base] if base else []) + inputs
    ref = everyone[0]
    names = ref.source.names()
    for other in everyone[1:]:
        mine, theirs = set(names), set(other.source.names())
        if mine != theirs:
            only_ref, only_other = sorted(mine - theirs)[:3], sorted(theirs - mine)[:3]
            lacking, having, names_ = (
                (other, ref, only_ref) if only_ref else (ref, other, only_other)
            )
            raise StropError(
                f"{lacking.label} lacks tensor(s) {', '.join(names_)} that {having.label} has: "
                "the models do not share an architecture"
            )
        for n in names:
            a, b = ref.source.info(n), other.source.info(n)
            if a.shape != b.shape:
                raise StropError(
                    f"tensor {n!r}: shape {list(a.shape)} in {ref.label} but {list(b.shape)} in "
                    f"{other.label}: the models do not share an architecture"
                )
    return names


def check_tokenizers(cfg: MergeConfig, inputs: list[Input], base: Input | None) -> Input:
    """Refuse differing vocabularies (the embedding rows would mean different tokens) and
    ambiguous chat templates; returns the input whose tokenizer the output gets."""
    everyone = ([base] if base else []) + inputs
    dirs_seen: dict[Path, Input] = {}
    for inp in everyone:
        dirs_seen.setdefault(inp.tokenizer_dir.resolve(), inp)
    distinct = list(dirs_seen.values())
    for other in distinct[1:]:
        diff = vocab_mismatch(distinct[0], other)
        if diff:
            raise StropError(
                f"tokenizers differ between {distinct[0].label} and {other.label} ({diff}); "
                "merging would mix embedding rows of different tokens"
            )
    if cfg.output.tokenizer_from is not None:
        by_name = {i.label: i for i in everyone}
        if cfg.output.tokenizer_from not in by_name:
            raise StropError(
                f"output.tokenizer_from: {cfg.output.tokenizer_from!r} is not one of "
                f"{', '.join(by_name)}"
            )
        return by_name[cfg.output.tokenizer_from]
    templates = {i.label: chat_template(i) for i in distinct}
    if len(set(templates.values())) > 1:
        raise StropError(
            "the inputs' chat templates differ ("
            + ", ".join(templates)
            + "); choose one with output.tokenizer_from"
        )
    return everyone[0]


def all_finite(t: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """isfinite in 1M-element chunks: on a whole tensor it allocates temporaries of the
    tensor's size (|t| and masks), which would set the merge's peak memory."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(c).all()) for c in flat.split(chunk))


def _check_finite(name: str, sources: list, tensors: list[torch.Tensor | None]) -> None:
    for src, t in zip(sources, tensors, strict=True):
        if t is not None and t.is_floating_point() and not all_finite(t):
            raise StropError(f"{src.label}: tensor {name!r} holds NaN or inf values")


def merged_tensors(
    method: MergeMethod,
    sources: list[Source],
    base: Source | None,
    names: list[str],
    resolve: Callable[[str, int], object],
) -> Iterator[tuple[str, torch.Tensor, torch.dtype]]:
    """Yield (name, merged fp32 tensor, the first input's dtype), one tensor at a time."""
    for name in names:
        thetas = [s.get(name) for s in sources]
        b = base.get(name) if base is not None else None
        _check_finite(name, [*sources, base], [*thetas, b])
        first_dtype = sources[0].info(name).dtype
        if not thetas[0].is_floating_point():  # integer buffers: must agree, copied as-is
            if any(not torch.equal(thetas[0], t) for t in thetas[1:]):
                raise StropError(f"integer tensor {name!r} differs between inputs")
            yield name, thetas[0], first_dtype
            continue
        out = method.fn(thetas, b, resolve(name, len(sources)))
        yield name, out, first_dtype
        del thetas, b, out


def _out_dtype(cfg: MergeConfig, first: torch.dtype) -> torch.dtype:
    return OUT_DTYPES.get(cfg.output.dtype, first) if first.is_floating_point else first


def n_layers_of(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config") or {}
    return int(cfg.get("num_hidden_layers") or text.get("num_hidden_layers") or 1)


def merge_in_memory(
    cfg: MergeConfig,
    state_dicts: list[dict[str, torch.Tensor]],
    base: dict[str, torch.Tensor] | None,
    n_layers: int,
) -> dict[str, torch.Tensor]:
    """The same merge on state dicts held in memory: the reference the streamed merge must
    equal bit for bit."""
    sources = [StateDictSource(sd, f"model{i}") for i, sd in enumerate(state_dicts)]
    b = StateDictSource(base, "base") if base is not None else None
    names = list(state_dicts[0])
    resolver = ParamResolver(cfg, n_layers)
    return {
        name: out.to(_out_dtype(cfg, dt))
        for name, out, dt in merged_tensors(MERGE_METHODS[cfg.method], sources, b, names, resolver)
    }


def _write_config(src_dir: Path, out: Path, dtype: str) -> None:
    config = json.loads((src_dir / "config.json").read_text())
    if dtype != "auto":
        name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
        config["dtype"] = name
        config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if (src_dir / "generation_config.json").exists():
        shutil.copy2(src_dir / "generation_config.json", out / "generation_config.json")


def _spec_params(cfg: MergeConfig, k: int, uses: frozenset[str]) -> dict:
    """The weight/density config entries of input k (none for checkpoints)."""
    if cfg.method == "checkpoint_average" or k >= len(cfg.models):
        return {}
    spec = cfg.models[k].model_dump(mode="json")
    return {key: spec[key] for key in ("weight", "density") if key in uses}


def _manifest(
    cfg: MergeConfig,
    inputs: list[Input],
    base: Input | None,
    tok: Input,
    out: Path,
    writer: ShardWriter,
    seconds: float,
) -> dict:
    import safetensors
    import transformers

    method_uses = MERGE_METHODS[cfg.method].uses

    def describe(inp: Input) -> dict:
        return {
            "name": inp.label,
            "spec": inp.spec,
            "kind": inp.kind,
            "path": str(inp.source.path if hasattr(inp.source, "path") else inp.spec),
            "files": {str(p): sha256(p) for p in inp.hashed},
            **({"notes": inp.notes} if inp.notes else {}),
        }

    return {
        "strop_version": strop.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": cfg.method,
        "params": {k: v for k, v in cfg.params.model_dump(mode="json").items() if k in method_uses},
        "inputs": [
            {**describe(inp), **_spec_params(cfg, k, method_uses)} for k, inp in enumerate(inputs)
        ],
        "base": describe(base) if base else None,
        "tokenizer_from": tok.label,
        "output": {
            "dtype": cfg.output.dtype,
            "tensors": sum(len(s) for s in writer.shards),
            "bytes": writer.total_bytes,
            "files": {f: sha256(out / f) for f in writer.files},
        },
        "config": cfg.model_dump(mode="json", exclude={"search"}),
        "seconds": round(seconds, 3),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
    }


def _save_tokenizer(src: Path, out: Path) -> None:
    # AutoTokenizer as saved, not strop's load_tokenizer: that one fills in a pad token.
    from transformers import AutoTokenizer

    quiet_transformers()
    AutoTokenizer.from_pretrained(src, trust_remote_code=False).save_pretrained(out)


def run_merge(cfg: MergeConfig, log: Callable[[str], None] = print) -> Path:
    """Merge as ``cfg`` says; returns the output dir."""
    start = time.perf_counter()
    out = Path(cfg.output.dir)
    if out.exists() and any(out.iterdir()) and not cfg.output.overwrite:
        raise StropError(f"output.dir: {out} exists and is not empty (set output.overwrite: true)")
    tmp: list[tempfile.TemporaryDirectory] = []
    try:
        inputs, base = open_all(cfg, tmp)
        # Vocabularies first: differing ones also differ in embedding shape, and the
        # tokenizer message says why.
        tok = check_tokenizers(cfg, inputs, base)
        names = check_compatible(inputs, base)
        method = MERGE_METHODS[cfg.method]
        first = inputs[0].source
        plan = [
            (n, TensorInfo(first.info(n).shape, _out_dtype(cfg, first.info(n).dtype)))
            for n in names
        ]
        resolver = ParamResolver(cfg, n_layers_of(inputs[0].model_dir))
        with atomic_dir(out, sum(info.nbytes for _, info in plan) + (1 << 20)) as work:
            writer = ShardWriter(work, plan, cfg.output.shard_size)
            sources = [i.source for i in inputs]
            stream = merged_tensors(method, sources, base.source if base else None, names, resolver)
            try:
                for k, (name, tensor, first_dtype) in enumerate(stream):
                    writer.write(name, tensor.to(_out_dtype(cfg, first_dtype)))
                    del tensor  # before the next tensor's inputs are read
                    if (k + 1) % 50 == 0:
                        log(f"  {k + 1}/{len(names)} tensors")
                writer.close()
            except BaseException:
                writer.abort()
                raise
            _write_config(inputs[0].model_dir, work, cfg.output.dtype)
            _save_tokenizer(tok.tokenizer_dir, work)
            manifest = _manifest(cfg, inputs, base, tok, work, writer, time.perf_counter() - start)
            (work / "merge_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    finally:
        for holder in tmp:
            holder.cleanup()
    log(
        f"merged {len(inputs)} inputs ({cfg.method}) into {out}: {len(names)} tensors, {len(writer.files)} shard(s)"
    )
    return out
