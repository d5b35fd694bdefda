"""`strop export SOURCE --to hf,gguf --quant f16,q8_0 --output DIR`: one run, several targets.

    DIR/hf/                      merged HF dir (safetensors, config, tokenizer, chat template,
                                 generation_config.json listing every end-of-turn id)
    DIR/gguf/NAME-QUANT.gguf     one file per quant type (strop.export.gguf_writer)
    DIR/export_report.json, .md  what was written, sizes, lineage, quality per quantised file

The `hf` dir is a one-input linear merge (strop.merge, streamed tensor by tensor; LoRA folded
as it streams, other adapters folded by peft), so it is what `strop merge` would write. GGUF
files are written from it. Quality: every GGUF file is loaded back through transformers' GGUF
loader and compared with the merged HF model on held-out text (strop.export.quality).
Everything is written under a temporary dir beside DIR and renamed at the end: a failed export
leaves nothing under DIR.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

from strop.errors import StropError
from strop.export import quality
from strop.export.gguf_writer import _check_quant, write_gguf
from strop.merge.config import MergeConfig
from strop.merge.inputs import sha256
from strop.merge.run import run_merge
from strop.train.artifacts import atomic_dir

TARGETS = ("hf", "gguf")


@dataclass
class ExportRequest:
    source: str
    output: Path
    targets: list[str] = field(default_factory=lambda: ["hf", "gguf"])
    quants: list[str] = field(default_factory=lambda: ["f16"])
    data: Path | None = None
    max_ppl_increase: float = 0.10  # a quantised file whose perplexity rises more is flagged


def check_request(req: ExportRequest) -> None:
    """Refuse bad targets, quant names and outputs before any model work."""
    for t in req.targets:
        if t not in TARGETS:
            raise StropError(f"--to: unknown target {t!r}; one of {', '.join(TARGETS)}")
    if "gguf" in req.targets:
        for q in req.quants:
            _check_quant(q)
    if req.data is not None and not req.data.is_file():
        raise StropError(f"--data: {req.data} is not a file")
    if req.output.exists() and (not req.output.is_dir() or any(req.output.iterdir())):
        raise StropError(f"--output: {req.output} exists and is not an empty directory")


def run_export(req: ExportRequest, log: Callable[[str], None] = print) -> dict:
    check_request(req)
    start = time.perf_counter()
    lineage = _lineage(req.source)
    name = _model_name(req.source)
    with atomic_dir(req.output) as work:
        hf = work / "hf"
        t0 = time.perf_counter()
        run_merge(
            MergeConfig(method="linear", models=[{"model": req.source}], output={"dir": str(hf)}),
            log=log,
        )
        (hf / "merge_manifest.json").rename(work / "merge_manifest.json")
        eos = _write_generation_config(hf)
        report = {"source": req.source, "lineage": lineage, "end_of_turn_ids": eos}
        merged_s = round(time.perf_counter() - t0, 1)
        report["targets"] = {}
        if "hf" in req.targets:
            report["targets"]["hf"] = {**_dir_summary(hf), "write_seconds": merged_s}
        measure = _Quality(hf, req.data or _run_eval_split(req.source), req.max_ppl_increase, log)
        for q in req.quants if "gguf" in req.targets else []:
            out = work / "gguf" / f"{name}-{q}.gguf"
            out.parent.mkdir(exist_ok=True)
            log(f"writing {out.name} ...")
            t0 = time.perf_counter()
            summary = write_gguf(hf, out, q, {k: str(v) for k, v in lineage.items()})
            entry = {"file": f"gguf/{out.name}", "bytes": out.stat().st_size, **summary}
            entry["write_seconds"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            entry["quality"] = measure(out)
            entry["quality_seconds"] = round(time.perf_counter() - t0, 1)
            report["targets"][f"gguf-{q}"] = entry
        if "hf" not in req.targets:
            shutil.rmtree(hf)
        report["seconds"] = round(time.perf_counter() - start, 1)
        (work / "export_report.json").write_text(json.dumps(report, indent=1) + "\n")
        (work / "export_report.md").write_text(report_markdown(report))
    return report


def degraded(report: dict) -> list[str]:
    """Targets whose quality check flagged them."""
    return [
        t
        for t, e in report["targets"].items()
        if isinstance(e.get("quality"), dict) and e["quality"].get("flagged")
    ]


class _Quality:
    """Measures GGUF files against the merged model on held-out rows; the model and the rows
    are loaded once, at the first file."""

    def __init__(self, hf: Path, data: Path | None, bound: float, log):
        self.hf, self.data, self.bound, self.log = hf, data, bound, log
        self.reference = self.sequences = None

    def __call__(self, gguf_file: Path) -> dict:
        if self.data is None:
            why = "no held-out data: pass --data FILE.jsonl (a run dir's eval split is the default)"
            return {"skipped": why}
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.reference is None:
            self.sequences = quality.held_out_sequences(
                self.data, AutoTokenizer.from_pretrained(self.hf)
            )
            self.reference = AutoModelForCausalLM.from_pretrained(self.hf, dtype="float32")
            self.reference.eval()
        candidate = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype="float32"
        ).eval()
        n = len(self.sequences)
        self.log(f"measuring {gguf_file.name} against the merged model on {n} rows of {self.data}")
        metrics = quality.compare(self.reference, candidate, self.sequences)
        metrics["data"] = str(self.data)
        metrics["flagged"] = metrics["ppl_delta_rel"] > self.bound
        metrics["bound"] = self.bound
        return metrics


def _write_generation_config(hf: Path) -> list[int]:
    """generation_config.json whose eos_token_id lists every end-of-turn id: an exported chat
    model must stop where the trained one stopped (strop.infer.stop_token_ids)."""
    from transformers import AutoTokenizer, GenerationConfig

    from strop.infer import stop_token_ids

    try:
        gc = GenerationConfig.from_pretrained(hf)
    except OSError:
        gc = GenerationConfig()
    tok = AutoTokenizer.from_pretrained(hf)
    eos = stop_token_ids(SimpleNamespace(generation_config=gc), tok)
    gc.eos_token_id = eos
    if gc.pad_token_id is None and tok.pad_token_id is not None:
        gc.pad_token_id = tok.pad_token_id
    gc.save_pretrained(hf)
    return eos


def _lineage(source: str) -> dict:
    """Where the exported weights came from: the source, and for a run dir its base model,
    method and training data (with the data file's sha256 when it is readable)."""
    path = Path(source)
    out: dict = {"source": source}
    cfg_file = path / "config.yaml"
    if path.is_dir() and cfg_file.is_file():
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        out["base_model"] = (cfg.get("model") or {}).get("name", "")
        out["method"] = (cfg.get("method") or {}).get("name", "")
        train = (cfg.get("data") or {}).get("train")
        if isinstance(train, str):
            out["dataset"] = train
            if Path(train).is_file():
                out["dataset_sha256"] = sha256(Path(train))
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        out["base_model"] = json.loads(adapter.read_text()).get("base_model_name_or_path", "")
    return out


def _run_eval_split(source: str) -> Path | None:
    cfg_file = Path(source) / "config.yaml"
    if not cfg_file.is_file():
        return None
    ev = ((yaml.safe_load(cfg_file.read_text()) or {}).get("data") or {}).get("eval")
    return Path(ev) if isinstance(ev, str) and Path(ev).is_file() else None


def _model_name(source: str) -> str:
    path = Path(source)
    return (path.name if path.exists() else source).replace("/", "-") or "model"


def _dir_summary(d: Path) -> dict:
    files = sorted(p for p in d.iterdir() if p.is_file())
    return {"dir": d.name, "bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def report_markdown(report: dict) -> str:
    lines = [f"# Export of {report['source']}", ""]
    lines += [f"- {k}: {v}" for k, v in report["lineage"].items()]
    eos = report["end_of_turn_ids"]
    lines += [f"- end-of-turn ids (generation_config.json, GGUF eos/eot): {eos}"]
    lines += ["", "| target | size MiB | write s | ppl | ppl change | mean KL | top-1 agreement |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in report["targets"].items():
        size = f"{e['bytes'] / 2**20:,.1f} | {e.get('write_seconds', '')}"
        q = e.get("quality") or {}
        if "ppl" in q:
            flag = " **(flagged: above the bound)**" if q["flagged"] else ""
            lines.append(
                f"| {name} | {size} | {q['ppl']:.3f} (ref {q['ppl_reference']:.3f}) | "
                f"{100 * q['ppl_delta_rel']:+.2f}%{flag} | {q['kl_mean']:.5f} | "
                f"{100 * q['top1_agreement']:.1f}% |"
            )
        else:
            lines.append(f"| {name} | {size} | {q.get('skipped', '')} | | | |")
    lines += ["", f"{report['seconds']} s"]
    return "\n".join(lines) + "\n"
