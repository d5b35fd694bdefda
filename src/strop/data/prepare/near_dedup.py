"""dedup_near: remove records that are near-duplicates of another (MinHash + LSH).

Workers compute each record's MinHash signature and band keys (strop.data.prepare.minhash);
the main process looks the band keys up in one dict per band, in input order, and confirms a
candidate only when the signatures agree on at least ``threshold`` of their entries (the
MinHash estimate of Jaccard similarity), so an LSH collision alone never removes a record.

``keep: first`` decides as records arrive (a record is removed when it is similar to one kept
earlier). ``keep: longest`` / ``quality`` link similar records into clusters (union-find) and
keep one per cluster once the whole input has been seen, so those records wait in a spool file
until the end. The index stores, per stored record, its band keys and a 16-bit-per-entry
signature (b-bit MinHash, Li & König 2010: equal low 16 bits stand in for equal values, adding
(1 - J) / 65536 to the estimate).
"""

from __future__ import annotations

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
        # main-process index
        self.tables: list[dict[int, int]] = [{} for _ in range(self.bands)]
        self.sigs = bytearray()  # 16-bit signatures of stored records, back to back
        self.origins: list[str] = []
        self.uids: list[int] = []  # the pipeline's id of each stored record (deferred modes)
        self.sizes: list[float] = []  # longest/quality: the number compared within a cluster
        self.parent: list[int] = []  # union-find over stored records (deferred modes)
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

    def _matches(self, keys: list[int], sig: bytes) -> list[tuple[int, float]]:
        cands = sorted(
            {c for t, k in zip(self.tables, keys, strict=True) if (c := t.get(k)) is not None}
        )
        if not cands:
            return []
        mine = np.frombuffer(sig, dtype=np.uint16)
        out = []
        for c in cands:
            est = float(np.count_nonzero(self._sig(c) == mine)) / len(mine)
            if est >= self.params.threshold:
                out.append((c, est))
        return out

    def _store(self, keys: list[int], sig: bytes, origin: str, size: float, info: dict) -> int:
        idx = len(self.origins)
        self.origins.append(origin)
        self.sigs += sig
        for table, k in zip(self.tables, keys, strict=True):
            table.setdefault(k, idx)
        if idx < PREVIEWS_KEPT:
            self.previews[idx] = _preview(raw_text(info.get("raw", b"")))
        if self.params.keep != "first":
            self.uids.append(info["uid"])
            self.sizes.append(size)
            self.parent.append(idx)
        return idx

    def decide(self, key: Any, origin: str, info: dict[str, Any]) -> Decision:
        if key is None:
            return Decision()
        keys, sig, size = key
        matches = self._matches(keys, sig)
        if self.params.keep == "first":
            if matches:
                rep, est = max(matches, key=lambda m: m[1])
                self._example(rep, origin, est, info)
                first = self.origins[rep]
                return Decision(
                    Removed("near_duplicate", f"~{est:.2f} similar to {first}"), duplicate_of=first
                )
            self._store(keys, sig, origin, size, info)
            return Decision()
        idx = self._store(keys, sig, origin, size, info)
        for rep, _ in matches:
            self._union(rep, idx)
        return Decision(pending=True)

    def _example(self, rep: int, origin: str, est: float, info: dict) -> None:
        if rep in self.clusters or (
            len(self.clusters) < self.params.examples and rep in self.previews
        ):
            members = self.clusters.setdefault(rep, [])
            if len(members) < 4:
                members.append((origin, est, _preview(raw_text(info.get("raw", b"")))))

    def _find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the earliest member is the root

    def finish(self) -> dict[int, Decision]:
        """Deferred modes: the best member of each cluster stays, the others are removed."""
        if self.params.keep == "first":
            return {}
        sizes = np.asarray(self.sizes, dtype=np.float64)
        sizes = np.where(np.isnan(sizes), -np.inf, sizes)  # no score: never preferred
        roots = np.fromiter((self._find(i) for i in range(len(self.parent))), dtype=np.int64)
        best: dict[int, int] = {}
        for i, r in enumerate(roots.tolist()):
            b = best.get(r)
            if b is None or sizes[i] > sizes[b]:  # strict: ties keep the earlier record
                best[r] = i
        removed: dict[int, Decision] = {}
        for i, r in enumerate(roots.tolist()):
            keep = best[r]
            if i != keep:
                first = self.origins[keep]
                rule = "near_duplicate"
                removed[self.uids[i]] = Decision(
                    Removed(rule, f"in a cluster represented by {first} ({self.params.keep})"),
                    duplicate_of=first,
                )
                if (keep in self.clusters or len(self.clusters) < self.params.examples) and (
                    keep in self.previews and len(self.clusters.get(keep, [])) < 4
                ):
                    self.clusters.setdefault(keep, []).append(
                        (self.origins[i], float("nan"), self.previews.get(i, ""))
                    )
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
