"""`strop data inspect CONFIG [overrides] --samples N`: the data exactly as the trainer sees it.

Per split: records, samples, tokens, trained tokens, truncated and dropped (with reasons), and
packing fill; then N rendered samples with trained tokens in bold green and masked ones dim.
Without colour (output not a terminal, or NO_COLOR set) trained spans are wrapped in [[ ]].
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from strop.config import load_config
from strop.data.dataset import STAGE_KIND, Split, build_datasets
from strop.data.render import IGNORE, Sample
from strop.errors import StropError
from strop.hub import resolve_model
from strop.models.load import load_tokenizer

SHOWN_DROPS = 5
OPEN, CLOSE = "[[", "]]"  # plain-text markers around trained spans
# Neighbouring tokens alternate between two shades so token boundaries stay visible.
TRAINED = ("bold green", "bold green on grey23")
MASKED = ("dim", "dim on grey23")


def _records(split: Split, kind: str) -> int:
    # Text documents longer than max_length become several samples "file:line#k".
    origins = {s.origin.rsplit("#", 1)[0] if kind == "text" else s.origin for s in split.samples}
    return len(origins) + len(split.dropped)


DOC_NAMES = {"preference": ("chosen", "rejected"), "kto": ("completion", "mismatched (KL)")}


def _pair_report(name: str, split: Split) -> list[str]:
    lines = [f"{name}: {split.stats.describe()}"]
    lines += [f"  dropped {o}: {r}" for o, r in split.dropped[:SHOWN_DROPS]]
    if len(split.dropped) > SHOWN_DROPS:
        lines.append(f"  ... and {len(split.dropped) - SHOWN_DROPS} more dropped")
    return lines


def _shown_samples(split: Split, kind: str, n: int) -> list[Sample]:
    """The first ``n`` samples; for preference/KTO rows, each row's two documents."""
    if kind not in DOC_NAMES:
        return split.samples[:n]
    out = []
    for k, row in enumerate(split.rows[:n]):
        start = 0
        for doc, length in zip(DOC_NAMES[kind], row.doc_lens, strict=True):
            end = start + length
            label = f"row {k} {doc}" + (f" {row.values}" if row.values else "")
            out.append(Sample(row.input_ids[start:end], row.labels[start:end], label))
            start = end
    return out


def split_report(name: str, split: Split, kind: str, max_length: int, packing: bool) -> list[str]:
    """Plain lines describing one split: counts, drops with reasons, packing fill."""
    if kind in DOC_NAMES:
        return _pair_report(name, split)
    st = split.stats
    share = f"{st.target_tokens / st.tokens:.1%}" if st.tokens else "0%"
    n_dropped = st.dropped_no_target + st.dropped_too_long
    lines = [
        f"{name}: {_records(split, kind)} records -> {st.samples} samples, {st.tokens} tokens "
        f"({st.target_tokens} trained, {share}); truncated {st.truncated}; dropped {n_dropped} "
        f"({st.dropped_no_target} no target left, {st.dropped_too_long} too long)"
    ]
    for origin, reason in split.dropped[:SHOWN_DROPS]:
        lines.append(f"  dropped {origin}: {reason}")
    if len(split.dropped) > SHOWN_DROPS:
        lines.append(f"  ... and {len(split.dropped) - SHOWN_DROPS} more dropped")
    rows = len(split.rows)
    fill = st.tokens / (rows * max_length) if rows else 0.0
    mode = "packed" if packing else "one sample per row"
    lines.append(
        f"  rows: {rows} ({mode}), fill {fill:.1%} of {rows} x max_length {max_length} tokens"
    )
    return lines


def _pieces(tokenizer, sample: Sample) -> list[tuple[str, bool]]:
    """(text, trained) per token. Tokens that decode to a partial character (byte-level BPE
    splits multi-byte characters) are grouped with the following ones until the text is whole."""
    out: list[tuple[str, bool]] = []
    group: list[int] = []
    for t, tok_id in enumerate(sample.input_ids):
        group.append(tok_id)
        text = tokenizer.decode(
            group, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        last = t == len(sample.input_ids) - 1
        if "\ufffd" in text and len(group) < 4 and not last:
            continue
        out.append((text, sample.labels[t] != IGNORE))
        group = []
    return out


def render_sample(tokenizer, sample: Sample, plain: bool) -> Text:
    """The sample's text with trained tokens highlighted (colour) or marked [[ ]] (plain)."""
    text = Text()
    inside = False
    for k, (piece, trained) in enumerate(_pieces(tokenizer, sample)):
        if plain:
            if trained != inside:
                text.append(OPEN if trained else CLOSE)
                inside = trained
            text.append(piece)
        else:
            text.append(piece, style=(TRAINED if trained else MASKED)[k % 2])
    if inside:
        text.append(CLOSE)
    return text


def inspect_command(config: str, overrides: list[str], samples: int) -> None:
    cfg = load_config(config, overrides)
    kind = STAGE_KIND.get(cfg.stage)
    if kind is None:
        raise StropError(
            f"stage: {cfg.stage!r} has no data pipeline to inspect yet "
            f"(supported: {', '.join(STAGE_KIND)})"
        )
    tokenizer = load_tokenizer(resolve_model(cfg.model.name))
    data = build_datasets(cfg.data, cfg.stage, tokenizer, cfg.train.seed, run_dir=None)
    console = Console(highlight=False, soft_wrap=True)
    plain = console.no_color or console.color_system is None

    def say(line: str | Text = "") -> None:
        console.print(line, markup=False) if isinstance(line, str) else console.print(line)

    for summary in data.summaries:
        say(summary)
    d = cfg.data
    mask = f", mask {d.mask}" if kind == "chat" else ""
    say(f"model {cfg.model.name}, stage {cfg.stage}{mask}, max_length {d.max_length}")
    for name, split in (("train", data.train), ("eval", data.eval)):
        if split is not None:
            for line in split_report(name, split, kind, d.max_length, d.packing):
                say(line)
    shown = _shown_samples(data.train, kind, max(samples, 0))
    if not shown:
        return
    say()
    if plain:
        say(f"legend: {OPEN}trained tokens{CLOSE}; everything else is masked (no loss)")
    else:
        legend = Text("legend: ")
        legend.append("trained", style=TRAINED[0]).append(" ").append("tokens", TRAINED[1])
        legend.append(", ").append("masked", style=MASKED[0]).append(" ")
        legend.append("tokens", style=MASKED[1]).append(" (shading alternates per token)")
        say(legend)
    for i, sample in enumerate(shown, 1):
        n_trained = sum(1 for y in sample.labels[1:] if y != IGNORE)
        say()
        say(
            f"--- sample {i}/{len(shown)}: {sample.origin} "
            f"({len(sample.input_ids)} tokens, {n_trained} trained) ---"
        )
        say(render_sample(tokenizer, sample, plain))
