"""From config to training rows: read + validate, split, tokenise with masks, pack."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError

from strop.config.schema import DataSection
from strop.data.batching import Row, pack, unpacked
from strop.data.pairs import PairStats, kto_rows, preference_rows
from strop.data.prepare.io import dumps, to_row
from strop.data.prompts import prompt_rows
from strop.data.records import BadRecord, Record
from strop.data.render import Sample, TemplateProblem, TokenizeStats, tokenize_records
from strop.data.validate import LoadResult, add_bad_records, load_records
from strop.errors import StropError

# Which records each stage needs: raw text for continued pre-training, chats for SFT,
# preference pairs for reward models and the DPO family, labelled completions for KTO.
STAGE_KIND = {
    "pt": "text",
    "sft": "chat",
    "rm": "preference",
    "dpo": "preference",
    "simpo": "preference",
    "orpo": "preference",
    "kto": "kto",
    "grpo": "prompt",
    "ppo": "prompt",
}
ROW_BUILDERS = {"preference": preference_rows, "kto": kto_rows, "prompt": prompt_rows}


@dataclass
class Split:
    samples: list[Sample]  # empty for preference/KTO splits, whose rows hold two documents
    rows: list[Row]
    stats: TokenizeStats | PairStats
    dropped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Datasets:
    train: Split
    eval: Split | None
    summaries: list[str]


def _read(paths, data: DataSection, kind: str, quarantine: Path | None) -> LoadResult:
    return load_records(
        paths,
        data.format,
        kind=kind,
        quarantine_path=quarantine,
        max_bad_fraction=data.max_bad_fraction,
        text_field=data.text_field,
    )


def split_holdout(records: list[Record], fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split by seed; at least one record on each side."""
    if not 0 < fraction < 1:
        raise StropError(f"data.eval: a held-out fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(len(records) * fraction))
    if n_eval >= len(records):
        raise StropError(f"data.eval={fraction} leaves no training records ({len(records)} read)")
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def _tokenize(tokenizer, records, data: DataSection, packing: bool, kind: str = "chat") -> Split:
    if kind in ROW_BUILDERS:
        rows, stats = ROW_BUILDERS[kind](tokenizer, records, data.max_length, data.truncation)
        return Split([], rows, stats, stats.dropped)
    samples, stats, dropped = tokenize_records(
        tokenizer, records, mask=data.mask, max_length=data.max_length, truncation=data.truncation
    )
    rows = pack(samples, data.max_length) if packing else unpacked(samples)
    return Split(samples, rows, stats, dropped)


def _bad_row(record: Record, problem: str) -> BadRecord:

    return BadRecord(record.origin, problem, dumps(to_row(record)))


def _tokenize_renderable(
    tokenizer, records, data: DataSection, packing: bool, kind: str
) -> tuple[Split, list[BadRecord]]:
    """``_tokenize``, with every record the chat template cannot render set aside as a bad row.

    Templates differ in what they refuse (a role they do not know, turns that do not
    alternate), so this is found only by rendering. The first failure switches to rendering
    record by record: clean data pays nothing, bad data twice."""
    try:
        return _tokenize(tokenizer, records, data, packing, kind), []
    except (TemplateProblem, TemplateError):
        pass
    good, bad = [], []
    for rec in records:
        try:
            _tokenize(tokenizer, [rec], data, packing, kind)
        except TemplateProblem as e:
            bad.append(_bad_row(rec, e.problem))
            continue
        except TemplateError as e:  # prompt rows render the template directly
            bad.append(_bad_row(rec, f"the model's chat template cannot render this prompt: {e}"))
            continue
        good.append(rec)
    return _tokenize(tokenizer, good, data, packing, kind), bad


def build_datasets(
    data: DataSection, stage: str, tokenizer, seed: int, run_dir: Path | None = None
) -> Datasets:
    kind = STAGE_KIND.get(stage)
    if kind is None:
        known = ", ".join(STAGE_KIND)
        raise StropError(f"stage: {stage!r} has no data pipeline yet (supported: {known})")
    q = (lambda name: run_dir / f"quarantine-{name}.jsonl") if run_dir else (lambda name: None)
    train_read = _read(data.train, data, kind, q("train"))
    train_records, eval_records, eval_read = train_read.records, None, None
    if isinstance(data.eval, float | int) and not isinstance(data.eval, bool) and data.eval > 0:
        train_records, eval_records = split_holdout(train_records, float(data.eval), seed)
    elif isinstance(data.eval, str) and data.eval:
        eval_read = _read(data.eval, data, kind, q("eval"))
        eval_records = eval_read.records
    train, bad = _tokenize_renderable(tokenizer, train_records, data, data.packing, kind)
    ev = None
    if eval_records:
        ev, eval_bad = _tokenize_renderable(tokenizer, eval_records, data, data.packing, kind)
        if eval_read is None:  # held out of the train file: its bad rows are the train file's
            bad += eval_bad
        else:
            add_bad_records(eval_read, eval_bad, data.max_bad_fraction)
    add_bad_records(train_read, bad, data.max_bad_fraction)
    summaries = [r.summary() for r in (train_read, eval_read) if r is not None]
    if not train.rows:
        raise StropError(f"{data.train}: no trainable sample left ({train.stats.describe()})")
    return Datasets(train, ev, summaries)
