"""MinHash signatures and LSH banding in numpy, a whole chunk of records at a time.

MinHash (Broder 1997): for a random hash function h, P[min h(A) = min h(B)] = J(A, B), the
Jaccard similarity of the shingle sets A and B; the share of equal entries over ``num_perm``
independent functions estimates J. Here every function is a multiply-add-shift hash of a 64-bit
shingle value, h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 with a_i odd, evaluated for all shingles
of many records in one array operation instead of one Python call per shingle.

LSH (Indyk & Motwani 1998; Leskovec et al., Mining of Massive Datasets §3.4): the signature is
cut into ``bands`` of ``rows`` entries; two records become candidates when any band is equal,
which happens with probability 1 - (1 - J^rows)^bands, an S-curve around the threshold.

Shingles: lower-cased words with every CJK character a token of its own (so Chinese text gets
character n-grams), or plain character n-grams of the text without spaces. Token and shingle
hashes are polynomial hashes of code points, mixed with splitmix64, so they are identical in
every process and on every run (Python's ``hash`` is salted per process).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from strop.data.prepare.base import CJK_RE, TOKEN_RE

MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
P_TOKEN = np.uint64(0x100000001B3)  # FNV-64 prime: multiplier for code points within a token
P_SHINGLE = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio constant: between tokens of a shingle
MAX_TOKEN = 256  # code points of a token that count (longer tokens are truncated for hashing)
# Shingles hashed per array operation: bounds the (num_perm x shingles) temporary, 8 MiB at 128
# permutations. Measured on 2,000-record chunks (118 shingles per record): 8,192 is 2x faster
# than 32,768 (the temporary stays in cache) and than 2,048 (fewer, larger numpy calls).
SHINGLES_PER_BATCH = 1 << 13


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.ones(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(1, n):
            out[i] = out[i - 1] * base
    return out


POW_TOKEN = _powers(P_TOKEN, MAX_TOKEN)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mixer (Steele et al. 2014): spreads polynomial hashes over all bits."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def token_hashes(tokens: list[str]) -> np.ndarray:
    """One 64-bit hash per token, computed for all tokens at once from their code points."""
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    joined = "\x01".join(tokens)
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    starts = np.zeros(len(tokens), dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    owner = np.repeat(np.arange(len(tokens)), lengths + 1)[: len(cps)]
    pos = np.arange(len(cps)) - starts[owner]
    with np.errstate(over="ignore"):
        terms = (cps.astype(np.uint64) + np.uint64(1)) * POW_TOKEN[np.minimum(pos, MAX_TOKEN - 1)]
        terms[cps == 1] = 0  # the separators
        return splitmix64(np.add.reduceat(terms, starts) + lengths.astype(np.uint64))


def char_tokens(text: str) -> list[str]:
    return list("".join(text.lower().split()))


# -- tokens and their hashes straight from the code points ----------------------------------------
# What ``ngram_tokens`` (words) and ``char_tokens`` (chars) split a text into depends only on
# the class of each character of the lower-cased text: SEP (not part of a token), RUN (word
# characters: consecutive ones form one token) or SINGLE (a token on its own: CJK characters in
# words mode, every non-space character in chars mode). With a class table, a whole chunk is
# tokenised and hashed in a few array operations, with no Python string per token.
SEP, RUN, SINGLE = 0, 1, 2


def _char_class(ch: str, mode: str) -> int:
    if mode == "chars":
        return SEP if ch.isspace() else SINGLE
    if CJK_RE.fullmatch(ch):
        return SINGLE
    return RUN if TOKEN_RE.fullmatch(ch) else SEP


@cache
def _class_table(mode: str) -> np.ndarray:
    """Classes of the Basic Multilingual Plane (characters above it are classed one by one)."""
    return np.fromiter((_char_class(chr(c), mode) for c in range(0x10000)), np.uint8, 0x10000)


def text_token_hashes(texts: list[str], mode: str = "words") -> tuple[np.ndarray, np.ndarray]:
    """``token_hashes`` of the tokens of every text back to back (``ngram_tokens`` for words,
    ``char_tokens`` for chars), and how many tokens each text has; without building the tokens."""
    n = len(texts)
    if n == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    lowered = [t.lower() for t in texts]
    # texts joined by "\n" (a separator in both modes); ends[i]: where text i stops
    ends = np.cumsum(np.fromiter(map(len, lowered), np.int64, n) + 1) - 1
    cps = np.frombuffer("\n".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    cls = _class_table(mode)[np.minimum(cps, 0xFFFF)]
    astral = np.flatnonzero(cps > 0xFFFF)
    if len(astral):
        values, where = np.unique(cps[astral], return_inverse=True)
        found = [_char_class(chr(v), mode) for v in values.tolist()]
        cls[astral] = np.asarray(found, dtype=np.uint8)[where]
    run = cls == RUN
    start = cls == SINGLE  # a token begins at every SINGLE and at the first RUN of a run
    start[1:] |= run[1:] & ~run[:-1]
    if len(cls):
        start[0] |= run[0]
    starts = np.flatnonzero(start)
    counts = np.bincount(np.searchsorted(ends, starts), minlength=n)[:n].astype(np.int64)
    inside = np.flatnonzero(cls != SEP)  # the characters of all tokens, in order
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64), counts
    first = np.flatnonzero(start[inside])  # each token's first character within ``inside``
    lengths = np.diff(np.append(first, len(inside)))
    pos = np.arange(len(inside)) - np.repeat(first, lengths)  # position within the token
    with np.errstate(over="ignore"):
        terms = (cps[inside].astype(np.uint64) + np.uint64(1)) * POW_TOKEN[
            np.minimum(pos, MAX_TOKEN - 1)
        ]
        return splitmix64(np.add.reduceat(terms, first) + lengths.astype(np.uint64)), counts


def batch_shingles(
    texts: list[str], size: int, mode: str = "words"
) -> tuple[np.ndarray, np.ndarray]:
    """The shingle values of all ``texts`` back to back, and how many each text has.

    A text of m >= size tokens has m - size + 1 shingles, a shorter non-empty one a single
    shingle of all its tokens, an empty one none. All texts are hashed in one array pass."""
    th, counts = text_token_hashes(texts, mode)
    starts = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    nsh = np.where(counts >= size, counts - size + 1, (counts > 0).astype(np.int64))
    total = int(nsh.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint64), nsh
    n = len(th)
    with np.errstate(over="ignore"):
        if n >= size:  # Horner over every window of ``size`` consecutive tokens
            acc = th[: n - size + 1].copy()
            for j in range(1, size):
                acc *= P_SHINGLE
                acc += th[j : n - size + 1 + j]
        else:
            acc = np.zeros(1, dtype=np.uint64)
        first = np.zeros(len(texts), dtype=np.int64)  # where each text's shingles start in out
        np.cumsum(nsh[:-1], out=first[1:])
        src = np.repeat(starts, nsh) + (np.arange(total) - np.repeat(first, nsh))
        out = acc[np.minimum(src, len(acc) - 1)]
        for r in np.flatnonzero((counts > 0) & (counts < size)).tolist():  # short texts
            v = np.uint64(0)
            for t in th[starts[r] : starts[r] + counts[r]]:
                v = v * P_SHINGLE + t
            out[first[r]] = v
    return splitmix64(out), nsh


def shingle_hashes(text: str, size: int, mode: str = "words") -> np.ndarray:
    """The shingle set of one text (see batch_shingles)."""
    return np.unique(batch_shingles([text], size, mode)[0])


class MinHasher:
    """Signatures for a batch of shingle sets, with fixed seeded hash functions."""

    def __init__(self, num_perm: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.a = a * np.uint64(2) + np.uint64(1)  # odd multipliers
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        """(len(shingle_sets), num_perm) uint32; an empty set gives all 0xFFFFFFFF."""
        counts = np.fromiter(map(len, shingle_sets), dtype=np.int64, count=len(shingle_sets))
        flat = np.concatenate(shingle_sets) if shingle_sets else np.zeros(0, np.uint64)
        return self.signatures_flat(flat, counts)

    def signatures_flat(self, flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Signatures of sets given back to back (``flat``) with their sizes (``counts``)."""
        out = np.full((len(counts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        ends = np.cumsum(counts)
        i = 0
        while i < len(counts):
            # grow the batch of sets until it holds SHINGLES_PER_BATCH shingles (at least one set)
            base = ends[i] - counts[i]
            j = max(i + 1, int(np.searchsorted(ends, base + SHINGLES_PER_BATCH, side="right")))
            self._batch(flat[base : ends[j - 1]], counts[i:j], out[i:j])
            i = j
        return out

    def _batch(self, flat: np.ndarray, sizes: np.ndarray, out: np.ndarray) -> None:
        nonempty = np.flatnonzero(sizes)
        if len(nonempty) == 0:
            return
        with np.errstate(over="ignore"):
            # (num_perm, shingles): reducing along the contiguous axis is ~3x faster
            hashed = self.a[:, None] * flat[None, :]
            hashed += self.b[:, None]
        starts = np.zeros(len(nonempty), dtype=np.int64)
        np.cumsum(sizes[nonempty][:-1], out=starts[1:])
        # min of the 64-bit values, then the top 32 bits: the same as the min of the top bits
        low = np.minimum.reduceat(hashed, starts, axis=1)
        out[nonempty] = (low >> np.uint64(32)).astype(np.uint32).T


def lsh_params(threshold: float, num_perm: int, miss_weight: float = 0.8) -> tuple[int, int]:
    """(bands, rows) minimising the weighted area of false candidates below the threshold and
    misses above it, under the S-curve 1 - (1 - s^rows)^bands. Misses weigh 4x more by
    default because dedup_near verifies every candidate on its signature: a false candidate
    costs a comparison, a miss costs a duplicate left in the data. At threshold 0.8 and 128
    permutations this gives 12 bands of 10 rows (equal weights would give 9 x 14, which finds
    only ~90% of pairs at J = 0.9)."""
    s = np.linspace(0.0, 1.0, 1001)
    best, best_cost = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        p = 1 - (1 - s**rows) ** bands
        below, above = s <= threshold, s >= threshold
        cost = (1 - miss_weight) * np.trapezoid(p[below], s[below]) + miss_weight * np.trapezoid(
            1 - p[above], s[above]
        )
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: each band's ``rows`` signature entries folded into one value."""
    n = sigs.shape[0]
    part = sigs[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        acc = np.zeros((n, bands), dtype=np.uint64)
        for j in range(rows):
            acc = acc * P_SHINGLE + part[:, :, j]
        return splitmix64(acc)
