"""Packing, collation and the resumable, shardable sampler.

Packed rows hold several documents; position ids restart per document and the attention mask
is block-diagonal causal, so no token ever attends across a document boundary (position ids
alone do not isolate documents under SDPA: DESIGN.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from strop.data.render import IGNORE, Sample


@dataclass
class Row:
    """A training row: one sample, or several packed end to end."""

    input_ids: list[int]
    labels: list[int]
    doc_lens: list[int]
    # Per-row numbers an objective needs beside the tokens (a KTO label, a reward margin,
    # precomputed reference log-probs), collated into ``strop_values`` when asked for.
    values: dict[str, float] = field(default_factory=dict)


def pack(samples: list[Sample], max_length: int) -> list[Row]:
    """First-fit-decreasing bin packing into rows of at most ``max_length`` tokens.

    Deterministic for a given sample list; the sampler shuffles rows afterwards.
    """
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i].input_ids), i))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = len(samples[i].input_ids)
        for b, free in enumerate(space):
            if n <= free:
                bins[b].append(i)
                space[b] -= n
                break
        else:
            bins.append([i])
            space.append(max_length - n)
    rows = []
    for members in bins:
        members.sort()  # keep source order inside a row: deterministic and readable
        ids = [t for i in members for t in samples[i].input_ids]
        labels = [t for i in members for t in samples[i].labels]
        rows.append(Row(ids, labels, [len(samples[i].input_ids) for i in members]))
    return rows


def unpacked(samples: list[Sample]) -> list[Row]:
    return [Row(s.input_ids, s.labels, [len(s.input_ids)]) for s in samples]


def documents(rows: list[Row]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every document of ``rows``, in order."""
    docs = []
    for r in rows:
        at = 0
        for n in r.doc_lens:
            docs.append((r.input_ids[at : at + n], r.labels[at : at + n]))
            at += n
    return docs


SHARE_MIN_TOKENS = 16  # a shorter common prefix is not worth its extra attention calls


def shared_prefix_length(docs: list[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens every document in ``docs`` ((input_ids, labels) pairs) can share:
    the longest common token prefix P such that no document has a target among its first P + 1
    tokens (token P is predicted from the last shared position, which is one position for all
    documents; a document's first label never counts: its first token is never a target) and
    every document keeps at least one token of its own. 0 for fewer than two documents."""
    if len(docs) < 2:
        return 0
    limit = min(len(ids) - 1 for ids, _ in docs)
    for _, labels in docs:
        first_target = next((i for i in range(1, len(labels)) if labels[i] != IGNORE), len(labels))
        limit = min(limit, first_target - 1)
    first = docs[0][0]
    p = 0
    while p < limit and all(ids[p] == first[p] for ids, _ in docs):
        p += 1
    return p


def _shared_prefix_batch(rows: list[Row], pad_id: int, dtype) -> dict | None:
    """All the documents of ``rows`` laid out as [shared prefix][suffix 1]..[suffix D] when they
    share at least SHARE_MIN_TOKENS leading non-target tokens (a common system prompt): the
    prefix is computed once and every suffix attends to it (strop.models.attention). Positions
    continue after the prefix, so each document sees exactly the positions and context it has
    alone: its loss and gradients are those of the unshared layout. None when nothing is shared."""
    docs = documents(rows)
    p = shared_prefix_length(docs)
    if p < SHARE_MIN_TOKENS:
        return None
    flat = Row(
        docs[0][0][:p] + [t for ids, _ in docs for t in ids[p:]],
        docs[0][1][:p] + [t for _, labels in docs for t in labels[p:]],
        [p] + [len(ids) - p for ids, _ in docs],
    )
    batch = collate([flat], pad_id, doc_attention=True, dtype=dtype)
    batch["position_ids"][0, p:] += p
    batch["strop_shared_prefix"] = [p]
    return batch


def shared_tokens(batch: dict) -> tuple[int, int]:
    """(input tokens the batch computes, tokens it does not because they are a shared prefix)."""
    computed = int(batch["input_ids"].numel())
    if "strop_shared_prefix" not in batch:
        return computed, 0
    (p,), (_, *suffixes) = batch["strop_shared_prefix"], batch["strop_doc_lens"][0]
    return computed, p * (len(suffixes) - 1)  # one row, no padding: [prefix][suffix]...


def collate(
    rows: list[Row],
    pad_id: int,
    doc_attention: bool = True,
    dtype: torch.dtype = torch.float32,
    with_docs: bool = False,
    share_prefix: bool = False,
) -> dict:
    """Make a batch from rows.

    With ``doc_attention`` (the default) the rows are laid end to end in a single row: no
    padding at all, whatever their lengths. The batch carries ``strop_doc_lens`` and no mask;
    the ``strop_docs`` attention runs one causal kernel per document (strop.models.attention).
    Otherwise rows are right-padded to the longest; packed rows get a 4-D additive
    block-diagonal causal mask and rows of one document the usual 2-D padding mask (for
    attention kernels outside transformers' interface).

    ``with_docs`` adds what sequence-level objectives (preference, KTO, reward) need:
    ``strop_doc_index`` [B, T], the number of each token's document counted over the whole
    batch in row order (-1 on padding), and ``strop_values``, each row value as a tensor [B].

    ``share_prefix`` (with ``doc_attention``, token-level objectives): documents that start with
    the same non-target tokens share one computation of them (``_shared_prefix_batch``); the
    batch then carries ``strop_shared_prefix``, the shared length per row.
    """
    if share_prefix and doc_attention and not with_docs:
        shared = _shared_prefix_batch(rows, pad_id, dtype)
        if shared is not None:
            return shared
    if with_docs:
        batch = collate(rows, pad_id, doc_attention, dtype)
        batch["strop_doc_index"] = _doc_index(rows, batch["input_ids"].shape)
        keys = rows[0].values.keys()
        batch["strop_values"] = {
            k: torch.tensor([r.values[k] for r in rows], dtype=torch.float64) for k in keys
        }
        return batch
    if doc_attention and len(rows) > 1:
        flat = Row(
            [t for r in rows for t in r.input_ids],
            [t for r in rows for t in r.labels],
            [n for r in rows for n in r.doc_lens],
        )
        return collate([flat], pad_id, doc_attention=True, dtype=dtype)
    width = max(len(r.input_ids) for r in rows)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    doc_ids = torch.full((b, width), -1, dtype=torch.long)  # -1 marks padding
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        pos, doc = [], []
        for d, length in enumerate(r.doc_lens):
            pos.extend(range(length))
            doc.extend([d] * length)
        position_ids[i, :n] = torch.tensor(pos)
        doc_ids[i, :n] = torch.tensor(doc)
    # Labels are predicted from the previous position: a document's first token must never be
    # a target of the previous document's last token.
    starts = torch.zeros_like(labels, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    labels = labels.masked_fill(starts, IGNORE)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if doc_attention:
        # Padding at the end of a row is one more (ignored) document.
        batch["strop_doc_lens"] = [
            r.doc_lens + ([width - len(r.input_ids)] if len(r.input_ids) < width else [])
            for r in rows
        ]
    elif any(len(r.doc_lens) > 1 for r in rows):
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = same_doc & causal & (doc_ids[:, :, None] >= 0)
        # Padding rows attend to themselves only, so softmax never sees an all-masked row.
        allowed |= torch.eye(width, dtype=torch.bool)
        mask = torch.zeros(b, 1, width, width, dtype=dtype)
        batch["attention_mask"] = mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    else:
        batch["attention_mask"] = (doc_ids >= 0).long()
    return batch


def _doc_index(rows: list[Row], shape: torch.Size) -> torch.Tensor:
    index = torch.full(shape, -1, dtype=torch.long)
    flat = shape[0] == 1 and len(rows) > 1  # doc attention laid every row end to end
    doc, pos = 0, 0
    for i, r in enumerate(rows):
        line = 0 if flat else i
        pos = pos if flat else 0
        for n in r.doc_lens:
            index[line, pos : pos + n] = doc
            doc, pos = doc + 1, pos + n
    return index


class ShardedSampler:
    """Deterministic per-epoch shuffling by seed, split across ranks, resumable mid-epoch.

    Every optimizer step consumes ``batch_size * grad_accum`` rows per rank; the tail of an
    epoch that does not fill a whole step on every rank is skipped (and logged by the caller).
    """

    def __init__(self, n_rows: int, rows_per_step: int, seed: int, rank: int = 0, world: int = 1):
        self.n_rows, self.rows_per_step = n_rows, rows_per_step
        self.seed, self.rank, self.world = seed, rank, world
        self.steps_per_epoch = n_rows // (rows_per_step * world)
        self.epoch, self.step_in_epoch = 0, 0
        self._cached: tuple[int, list[int]] | None = None

    def _order(self, epoch: int) -> list[int]:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch)
            self._cached = (epoch, torch.randperm(self.n_rows, generator=g).tolist())
        return self._cached[1]

    def next_step(self) -> list[int]:
        """Row indices for this rank's next optimizer step."""
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        order = self._order(self.epoch)
        per_step = self.rows_per_step * self.world
        chunk = order[self.step_in_epoch * per_step : (self.step_in_epoch + 1) * per_step]
        self.step_in_epoch += 1
        return chunk[self.rank :: self.world]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
