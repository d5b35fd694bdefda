"""Exact and near dedup: hand-made cases (CJK too), MinHash estimates against true Jaccard,
and recall/precision on planted near-duplicate clusters."""

from __future__ import annotations

import random

import numpy as np
import pytest

from strop.data.prepare import clean_records
from strop.data.prepare.minhash import MinHasher, lsh_params, shingle_hashes
from strop.data.prepare.synthetic import _chinese, _english
from strop.data.records import Message, Record


def chat(user: str, answer: str, i: int) -> Record:
    return Record(f"t:{i}", messages=[Message("user", user), Message("assistant", answer)])


def kept_ids(records: list[Record], steps: list) -> list[int]:
    kept, _ = clean_records(records, steps)
    return [int(r.origin.split(":")[1].split("#")[0]) for r in kept]


# -- exact ----------------------------------------------------------------------------------------


def test_exact_dedup_ignores_case_and_whitespace_but_not_roles():
    recs = [
        chat("What is 2+2?", "It is 4.", 0),
        chat("what is  2+2? ", "It is 4.", 1),  # same after lower-casing + whitespace
        chat("What is 2+2?", "It is four.", 2),  # different answer
        Record("t:3", messages=[Message("assistant", "What is 2+2?"), Message("user", "It is 4.")]),
        chat("中文问题", "中文回答", 4),
        chat("中文问题", "中文回答", 5),
    ]
    result = clean_records(recs, [("dedup_exact", {})])
    assert [int(r.origin[2:]) for r in result.kept] == [0, 2, 3, 4]
    assert [(r["origin"], r["duplicate_of"]) for r in result.removed] == [
        ("t:1", "t:0"),
        ("t:5", "t:4"),
    ]
    strict = [("dedup_exact", {"lowercase": False, "ignore_whitespace": False})]
    assert kept_ids(recs, strict) == [0, 1, 2, 3, 4]


def test_prompt_collapse_keeps_the_first_answer_per_question():
    recs = [chat("Q1", "A", 0), chat("Q1", "B", 1), chat("Q2", "C", 2), chat("q1", "A", 3)]
    assert kept_ids(recs, [("dedup_exact", {})]) == [0, 1, 2]
    result = clean_records(recs, [("dedup_exact", {"prompt": "collapse"})])
    assert [r.origin for r in result.kept] == ["t:0", "t:2"]
    assert {r["origin"]: r["rule"] for r in result.removed} == {
        "t:1": "duplicate_prompt",
        "t:3": "duplicate",
    }


def test_exact_dedup_of_text_and_preference_records():
    texts = [Record(f"t:{i}", text=t) for i, t in enumerate(["Doc A", "doc a", "Doc B"])]
    assert kept_ids(texts, [("dedup_exact", {})]) == [0, 2]
    p = [Message("user", "Q")]
    pairs = [
        Record(
            "t:0",
            messages=p,
            chosen=[Message("assistant", "good")],
            rejected=[Message("assistant", "bad")],
        ),
        Record(
            "t:1",
            messages=p,
            chosen=[Message("assistant", "bad")],
            rejected=[Message("assistant", "good")],
        ),
        Record(
            "t:2",
            messages=p,
            chosen=[Message("assistant", "good")],
            rejected=[Message("assistant", "bad")],
        ),
    ]
    assert kept_ids(pairs, [("dedup_exact", {})]) == [0, 1]  # swapped pair is a different pair


# -- MinHash --------------------------------------------------------------------------------------


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / len(sa | sb)


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    hasher = MinHasher(256, seed=3)
    errors = []
    for _ in range(40):
        base = _english(rng, 60, 120)
        words = base.split()
        for i in rng.sample(range(len(words)), rng.randint(0, 12)):
            words[i] = rng.choice(["alpha", "beta", "gamma"])
        a, b = shingle_hashes(base, 3), shingle_hashes(" ".join(words), 3)
        sig = hasher.signatures([a, b])
        errors.append(abs((sig[0] == sig[1]).mean() - _jaccard(a, b)))
    # standard error of the estimate at 256 permutations is at most 0.5/16 = 0.031
    assert np.mean(errors) < 0.03 and max(errors) < 0.12


def test_minhash_agrees_with_datasketch():
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(1)
    ours, theirs = [], []
    hasher = MinHasher(128)
    for _ in range(30):
        base = _english(rng, 40, 80).lower().rstrip(".")
        words = base.split()
        other = words[:]
        for i in rng.sample(range(len(words)), rng.randint(0, 10)):
            other[i] = "zzz"
        grams = [{" ".join(w[i : i + 3]) for i in range(len(w) - 2)} for w in (words, other)]
        mh = [datasketch.MinHash(num_perm=128, seed=1) for _ in range(2)]
        for m, g in zip(mh, grams, strict=True):
            m.update_batch([s.encode() for s in g])
        theirs.append(mh[0].jaccard(mh[1]))
        sig = hasher.signatures([shingle_hashes(base, 3), shingle_hashes(" ".join(other), 3)])
        ours.append((sig[0] == sig[1]).mean())
    # two independent estimators of the same Jaccard similarity
    assert np.mean(np.abs(np.array(ours) - np.array(theirs))) < 0.06


def test_lsh_bands_favour_recall_above_the_threshold():
    bands, rows = lsh_params(0.8, 128)
    assert (bands, rows) == (12, 10)
    p = lambda s: 1 - (1 - s**rows) ** bands  # noqa: E731
    assert p(0.9) > 0.99 and p(0.85) > 0.9 and p(0.5) < 0.02


def test_cjk_text_gets_character_shingles():
    a = "今天天气很好我们去公园散步吧然后去吃午饭"
    assert len(shingle_hashes(a, 5)) == len(a) - 4
    assert len(shingle_hashes("hello world", 5)) == 1  # shorter than 5 tokens: one shingle


# -- near dedup on planted clusters ---------------------------------------------------------------


def planted_clusters(n_clusters: int, size: int, singles: int, seed: int = 0):
    """Clusters of near-copies (one word or character of a long answer changed, so any two
    members are above 0.8 Jaccard on 5-gram shingles) plus unrelated singles."""
    rng = random.Random(seed)
    recs, cluster_of = [], []
    for c in range(n_clusters):
        cjk = c % 3 == 0
        base = _chinese(rng, 200, 260) if cjk else _english(rng, 150, 200)
        for _ in range(size):
            if cjk:
                chars = list(base)
                chars[rng.randrange(len(chars))] = "鹿"
                text = "".join(chars)
            else:
                words = base.split()
                for i in rng.sample(range(len(words)), 1):
                    words[i] = "zebra"
                text = " ".join(words)
            recs.append(text)
            cluster_of.append(c)
    for s in range(singles):
        recs.append(_chinese(rng, 200, 260) if s % 3 == 0 else _english(rng, 150, 200))
        cluster_of.append(-1 - s)
    order = list(range(len(recs)))
    rng.shuffle(order)
    records = [chat("q", recs[i], k) for k, i in enumerate(order)]
    return records, [cluster_of[i] for i in order]


def test_near_dedup_recall_and_precision_on_planted_clusters():
    records, cluster = planted_clusters(n_clusters=60, size=4, singles=300)
    result = clean_records(records, [("dedup_near", {"threshold": 0.8})])
    kept = [int(r.origin[2:]) for r in result.kept]
    kept_clusters = [cluster[k] for k in kept]
    removed = [int(r["origin"][2:]) for r in result.removed]
    planted = 60 * 3  # every cluster member but one is a duplicate
    true_removed = sum(1 for k in removed if cluster[k] >= 0)
    recall = true_removed / planted
    precision = true_removed / max(len(removed), 1)
    assert recall >= 0.95, recall
    assert precision == 1.0  # no single record is ever removed
    assert len(set(kept_clusters)) == 60 + 300  # every cluster keeps one representative
    s = result.stats[0]
    assert s.removed == len(removed) and s.rules["near_duplicate"] == len(removed)


def test_keep_longest_and_first():
    base = _english(random.Random(5), 90, 100)
    words = base.split()
    shorter = " ".join(words[:-1])
    longer = base + " extra"
    recs = [chat("q", shorter, 0), chat("q", longer, 1), chat("q", base, 2)]
    assert kept_ids(recs, [("dedup_near", {"keep": "first"})]) == [0]
    assert kept_ids(recs, [("dedup_near", {"keep": "longest"})]) == [1]


def test_keep_quality_prefers_the_best_score():
    base = _english(random.Random(6), 90, 100)
    recs = [chat("q", base + " a", i) for i in range(3)]
    for r, ppl in zip(recs, [30.0, 12.0, 50.0], strict=True):
        r.meta["quality_ppl"] = ppl
    assert kept_ids(recs, [("dedup_near", {"keep": "quality"})]) == [1]
    higher = {"keep": "quality", "higher_is_better": True}
    assert kept_ids(recs, [("dedup_near", higher)]) == [2]


def test_report_shows_example_clusters():
    records, _ = planted_clusters(n_clusters=3, size=3, singles=5)

    result = clean_records(records, [("dedup_near", {})])
    assert 5 <= len(result.removed) <= 6  # 6 planted; recall at this size is tested above
    assert all(r["reason"].startswith("~") for r in result.removed)
    from strop.data.prepare.near_dedup import NearDedup, NearDedupParams

    step = NearDedup(NearDedupParams(examples=2))
    for rec, res in zip(records, step.apply(records), strict=True):
        step.decide(res.key, rec.origin, {"uid": 0, "raw": b"{}"})
    clusters = step.report()["example_clusters"]
    assert len(clusters) == 2 and all(1 <= len(c["removed"]) <= 2 for c in clusters)
    assert all(0.8 <= r["similarity"] <= 1 for c in clusters for r in c["removed"])


# -- near dedup: the cluster rule (greedy in keep order, every candidate under a band key) -------


def hand_keyed_step(keep: str):
    """8 permutations in 2 bands of 4 rows. A, B and C agree on the first band (key 10); in the
    second, B and C differ in one row. So est(A, B) = est(A, C) = 0.5 and est(B, C) = 0.875."""
    from strop.data.prepare.near_dedup import NearDedup, NearDedupParams

    step = NearDedup(NearDedupParams(threshold=0.6, num_perm=8, bands=2, keep=keep))
    sig = lambda *v: np.array(v, dtype=np.uint16).tobytes()  # noqa: E731
    rows = [
        ("A", [10, 20], sig(1, 1, 1, 1, 1, 1, 1, 1), 1.0),
        ("B", [10, 30], sig(1, 1, 1, 1, 2, 2, 2, 2), 3.0),  # the longest
        ("C", [10, 40], sig(1, 1, 1, 1, 2, 2, 2, 3), 2.0),
    ]
    return step, rows


@pytest.mark.parametrize("keep", ["first", "longest"])
def test_a_record_similar_only_to_a_later_member_of_a_band_bucket_is_found(keep: str):
    """The old index kept only the first record stored under a band key (A under 10), so C,
    whose only shared band with B is 10, was compared with A alone and kept."""
    step, rows = hand_keyed_step(keep)
    decisions = {}
    for uid, (name, keys, sig, size) in enumerate(rows):
        decisions[name] = step.decide((keys, sig, size), name, {"uid": uid, "raw": b"{}"})
    if keep == "longest":
        assert all(d.pending for d in decisions.values())
        late = step.finish()
        decisions = {name: late.get(uid, decisions[name]) for uid, (name, *_) in enumerate(rows)}
    removed = {n: d.duplicate_of for n, d in decisions.items() if d.removed is not None}
    assert removed == {"C": "B"}
    assert decisions["C"].removed.detail.startswith("~0.88 similar to B")


def chain(n: int, seed: int = 3) -> list[Record]:
    """Records each a little longer than the one before and sharing ~90% of its 5-gram
    shingles with it, so the first and last have almost nothing in common."""
    rng = random.Random(seed)
    words = _english(rng, 260, 260).split()
    out = []
    for i in range(n):
        words[i * 12 : i * 12 + 6] = [f"changed{i:02d}x{j}" for j in range(6)]
        out.append(chat("q", " ".join(words) + " tail" * i, i))
    return out


@pytest.mark.parametrize("keep", ["first", "longest"])
def test_every_removed_record_is_similar_to_the_record_kept_in_its_place(keep: str):
    """Old keep: longest joined the whole chain into one union-find cluster and removed its
    first member as a duplicate of the last one, though they share few shingles."""
    recs = chain(12)
    hasher = MinHasher(128, seed=1)
    sigs = hasher.signatures([shingle_hashes("q\n" + r.messages[1].content, 5) for r in recs])
    result = clean_records(recs, [("dedup_near", {"keep": keep})])
    assert result.removed and len(result.kept) > 1  # a chain is neither all kept nor one
    kept = {r.origin for r in result.kept}
    ends = np.count_nonzero(sigs[0] == sigs[-1]) / 128
    assert ends < 0.5  # the chain's ends are not near-duplicates
    assert [len(r.messages[1].content) for r in recs] == sorted(
        len(r.messages[1].content) for r in recs
    )
    for entry in result.removed:
        i, j = (int(o.split(":")[1]) for o in (entry["origin"], entry["duplicate_of"]))
        assert entry["duplicate_of"] in kept
        assert np.count_nonzero(sigs[i] == sigs[j]) / 128 >= 0.8, entry


def test_keep_quality_with_equal_scores_equals_keep_first():
    """Both are one rule, greedy in keep order; with every score equal the order is the input's."""
    records, _ = planted_clusters(n_clusters=20, size=4, singles=40, seed=2)
    for r in records:
        r.meta["quality_ppl"] = 1.0
    first = clean_records(records, [("dedup_near", {"keep": "first"})])
    quality = clean_records(records, [("dedup_near", {"keep": "quality"})])
    assert [r.origin for r in quality.kept] != []
    assert sorted(r.origin for r in quality.kept) == sorted(r.origin for r in first.kept)
    pairs = lambda res: sorted((e["origin"], e["duplicate_of"]) for e in res.removed)  # noqa: E731
    assert pairs(quality) == pairs(first)
