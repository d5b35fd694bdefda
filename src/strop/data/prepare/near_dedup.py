"""dedup_near: remove records that are near-duplicates of another (MinHash + LSH).

Workers compute each record's MinHash signature and band keys (strop.data.prepare.minhash);
the main process looks the band keys up in one dict per band and confirms a candidate only when
the signatures agree on at least ``threshold`` of their entries (the MinHash estimate of Jaccard
similarity), so an LSH collision alone never removes a record.

One rule for every ``keep``: records are taken in keep order, and a record is removed when it is
a verified candidate of a record already kept; otherwise it is kept and indexed under all its
band keys. ``keep: first`` takes them in input order, so it decides as records arrive;
``longest`` / ``quality`` take them best first (ties: input order) once the whole input has been
seen, so their records wait in a spool file and only their keys and signatures stay in memory.
Every removed record is therefore similar to the record kept in its place (no single-linkage
chains), and a band bucket holds every kept record with that key, not only the first, so no
candidate is missed. The index stores, per kept record, one dict entry per band and a
16-bit-per-entry signature (b-bit MinHash, Li & König 2010: equal low 16 bits stand in for equal
values, adding (1 - J) / 65536 to the estimate).
"""

from __future__ import annotations

from array import array
from typing import Any, Literal

import numpy as np
from pydantic import Field

from strop.config.schema import Section
from strop.data.prepare.base import Decision, Keyed, Removed, Result, Step, char_length, texts
from strop.data.prepare.io import raw_text
from strop.data.prepare.minhash import MinHasher, band_keys, batch_shingles, lsh_params
from strop.data.records import Record

PREVIEW_CHARS = 160
PREVIEWS_KEPT = 5000  # previews remembered for report examples (bounded)


class NearDedupParams(Section):
    threshold: float = Field(0.8, gt=0, lt=1)
    """Estimated Jaccard similarity of shingle sets at or above which records are duplicates."""
    num_perm: int = Field(128, ge=8, le=1024)
    shingle_size: int = Field(5, ge=1)
    """Tokens per shingle: words, with each CJK character a token (``shingle: words``), or
    characters (``shingle: chars``)."""
    shingle: Literal["words", "chars"] = "words"
    keep: Literal["first", "longest", "quality"] = "first"
    """Which record of a cluster stays: the first seen, the longest (characters; ties: first),
    or the best ``quality_field`` value (set by the quality step; ties: first)."""
    quality_field: str = "quality_ppl"
    higher_is_better: bool = False
    """For keep: quality. Perplexity is better when lower."""
    bands: int | None = Field(None, ge=1)
    """LSH bands; default: chosen from threshold and num_perm to balance misses and false
    candidates. rows = num_perm // bands."""
    seed: int = 1
    examples: int = Field(5, ge=0)
    """Clusters shown in the report."""


def _preview(raw: str) -> str:
    return raw if len(raw) <= PREVIEW_CHARS else raw[:PREVIEW_CHARS] + "…"


class NearDedup(Step):
    name = "dedup_near"
    Params = NearDedupParams
    stateful = True

    def __init__(self, params: NearDedupParams) -> None:
        super().__init__(params)
        p = params
        self.bands, self.rows = (
            (p.bands, p.num_perm // p.bands) if p.bands else lsh_params(p.threshold, p.num_perm)
        )
        if self.rows < 1:
            raise ValueError(f"bands={p.bands} exceeds num_perm={p.num_perm}")
        self.hasher = MinHasher(p.num_perm, p.seed)
        # main-process index: band key -> kept record, or a list of them once a key is shared
        self.tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self.kept_order: dict[int, int] = {}  # stored record -> position in keep order
        self.sigs = bytearray()  # 16-bit signatures of stored records, back to back
        self.origins: list[str] = []
        # keep: longest / quality only: what finish() needs of every stored record
        self.keys = array("Q")  # band keys, ``bands`` per record
        self.sizes = array("d")  # the number compared (characters, or the signed score)
        self.uids = array("q")  # the pipeline's id of the record
        self.previews: dict[int, str] = {}
        self.clusters: dict[int, list[tuple[str, float, str]]] = {}  # examples: rep -> dups

    # -- workers ----------------------------------------------------------------------------
    def apply(self, records: list[Record]) -> list[Result]:
        p = self.params
        flat, counts = batch_shingles(
            ["\n".join(texts(r)) for r in records], p.shingle_size, p.shingle
        )
        sigs = self.hasher.signatures_flat(flat, counts)
        keys = band_keys(sigs, self.bands, self.rows)
        low = (sigs & 0xFFFF).astype(np.uint16)
        out: list[Result] = []
        for i, rec in enumerate(records):
            if counts[i] == 0:
                out.append(Keyed(None))  # nothing to compare (no words): never a duplicate
                continue
            size = float(char_length(rec))
            if p.keep == "quality":
                value = rec.meta.get(p.quality_field)
                value = float(value) if isinstance(value, int | float) else float("nan")
                size = value if p.higher_is_better else -value
            out.append(Keyed((keys[i].tolist(), low[i].tobytes(), size)))
        return out

    # -- main process -----------------------------------------------------------------------
    def _sig(self, idx: int) -> np.ndarray:
        n = self.params.num_perm
        return np.frombuffer(self.sigs, dtype=np.uint16, count=n, offset=idx * n * 2)

    def _best_match(self, keys: list[int], sig: bytes) -> tuple[int, float] | None:
        """The kept record most similar to ``sig`` among its LSH candidates (ties: the one
        kept first), if any reaches the threshold."""
        hits = [table.get(k) for table, k in zip(self.tables, keys, strict=True)]
        if hits.count(None) == len(hits):  # most records: no band seen before
            return None
        cands: set[int] = set()
        for hit in hits:
            if type(hit) is list:
                cands.update(hit)
            elif hit is not None:
                cands.add(hit)
        mine = np.frombuffer(sig, dtype=np.uint16)
        best = None
        for c in sorted(cands, key=self.kept_order.__getitem__):
            est = float(np.count_nonzero(self._sig(c) == mine)) / len(mine)
            if est >= self.params.threshold and (best is None or est > best[1]):
                best = (c, est)
        return best

    def _index(self, keys: list[int], idx: int) -> None:
        """Every kept record goes under every band key (a list once a key is shared)."""
        self.kept_order[idx] = len(self.kept_order)
        for table, k in zip(self.tables, keys, strict=True):
            hit = table.setdefault(k, idx)  # one lookup when the key is new (the usual case)
            if hit is idx:
                continue
            if type(hit) is list:
                hit.append(idx)
            else:
                table[k] = [hit, idx]

    def _store(self, sig: bytes, origin: str, info: dict) -> int:
        idx = len(self.origins)
        self.origins.append(origin)
        self.sigs += sig
        if idx < PREVIEWS_KEPT:
            self.previews[idx] = _preview(raw_text(info.get("raw", b"")))
        return idx

    def _removal(self, rep: int, est: float) -> Decision:
        first = self.origins[rep]
        how = "" if self.params.keep == "first" else f" (kept: {self.params.keep})"
        return Decision(
            Removed("near_duplicate", f"~{est:.2f} similar to {first}{how}"), duplicate_of=first
        )

    def decide(self, key: Any, origin: str, info: dict[str, Any]) -> Decision:
        if key is None:
            return Decision()
        keys, sig, size = key
        if self.params.keep != "first":  # decided in finish(), best first
            self._store(sig, origin, info)
            self.keys.extend(keys)
            self.sizes.append(size)
            self.uids.append(info["uid"])
            return Decision(pending=True)
        match = self._best_match(keys, sig)
        if match is not None:
            rep, est = match
            self._example(rep, origin, est, _preview(raw_text(info.get("raw", b""))))
            return self._removal(rep, est)
        self._index(keys, self._store(sig, origin, info))
        return Decision()

    def _example(self, rep: int, origin: str, est: float, preview: str) -> None:
        if rep in self.clusters or (
            len(self.clusters) < self.params.examples and rep in self.previews
        ):
            members = self.clusters.setdefault(rep, [])
            if len(members) < 4:
                members.append((origin, est, preview))

    def finish(self) -> dict[int, Decision]:
        """keep: longest / quality: the same greedy rule as keep: first, over the stored
        records best first (ties: input order). Returns the removals by pipeline record id."""
        if self.params.keep == "first" or not self.origins:
            return {}
        sizes = np.asarray(self.sizes, dtype=np.float64)
        sizes = np.where(np.isnan(sizes), -np.inf, sizes)  # no score: ranked last
        order = np.lexsort((np.arange(len(sizes)), -sizes))  # best first, then input order
        keys = np.frombuffer(self.keys, dtype=np.uint64).reshape(-1, self.bands)
        removed: dict[int, Decision] = {}
        for i in order.tolist():
            row = keys[i].tolist()
            sig = self._sig(i).tobytes()
            match = self._best_match(row, sig)
            if match is None:
                self._index(row, i)
                continue
            rep, est = match
            removed[self.uids[i]] = self._removal(rep, est)
            self._example(rep, self.origins[i], est, self.previews.get(i, ""))
        return removed

    def report(self) -> dict[str, Any]:
        examples = [
            {
                "kept": {"origin": self.origins[rep], "preview": self.previews.get(rep, "")},
                "removed": [
                    {
                        "origin": o,
                        "similarity": None if est != est else round(est, 3),
                        "preview": pv,
                    }
                    for o, est, pv in members
                ],
            }
            for rep, members in list(self.clusters.items())[: self.params.examples]
        ]
        return {
            "bands": self.bands,
            "rows": self.rows,
            "stored": len(self.origins),
            "example_clusters": examples,
        }
