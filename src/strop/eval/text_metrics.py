"""Reference-based text metrics for generation tasks: ROUGE-1/2/L, BLEU, chrF and pass@k.

ROUGE (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries") is computed here
rather than through a package so its tokenisation is ours and works for Chinese: Han
characters, Hiragana and Katakana are one token each (those scripts put no spaces between
words), every other run of letters or digits is one lower-cased word token, and punctuation
and whitespace are dropped. Each ROUGE variant is the F-measure (beta = 1) of precision and
recall of the prediction against the reference.

BLEU (Papineni et al. 2002) and chrF (Popović 2015) come from sacrebleu, the implementation
papers report. They are *corpus* metrics: the score is computed from n-gram counts summed over
all examples, not a mean of sentence scores. Each example therefore keeps its sufficient
statistics (sacrebleu's own per-sentence count vector), so the paired bootstrap can resample
examples and recompute the corpus score exactly (Koehn 2004); the sentence-level score of each
example is kept beside them for inspection.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): with n
samples per problem of which c are correct, the unbiased estimate of the probability that at
least one of k samples is correct is 1 - C(n - c, k) / C(n, k).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import cache

from sacrebleu.metrics import BLEU, CHRF

from strop.eval.extraction import parse_json_object

# Scripts written without spaces between words: one token per character.
_CJK = (
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3400-\u4dbf"  # CJK Unified Ideographs Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
    "\U00020000-\U0002ebef"  # Extensions B-F
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def rouge_tokens(text: str) -> list[str]:
    """CJK characters one by one, other letter/digit runs as lower-cased words."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F1: clipped (multiset) n-gram overlap. Two texts without a single token score
    1; otherwise a side without an n-gram scores 0."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred and not ref:
        return 1.0
    p, r = _ngrams(pred, n), _ngrams(ref, n)
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (sentence level): LCS / prediction length and LCS / reference length."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred and not ref:
        return 1.0
    return _f1(lcs_length(pred, ref), len(pred), len(ref))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    return {
        "rouge1": rouge_n(prediction, reference, 1),
        "rouge2": rouge_n(prediction, reference, 2),
        "rougeL": rouge_l(prediction, reference),
    }


# -- sacrebleu ----------------------------------------------------------------------------------


@cache
def _bleu(tokenize: str = "13a", effective_order: bool = False):
    return BLEU(tokenize=tokenize, effective_order=effective_order)


@cache
def _chrf():
    return CHRF()


def bleu_example(prediction: str, reference: str, tokenize: str = "13a") -> tuple[float, list]:
    """(sentence BLEU with effective order, the sufficient statistics corpus BLEU sums)."""
    sentence = _bleu(tokenize, True).sentence_score(prediction, [reference]).score
    [stats] = _bleu(tokenize)._extract_corpus_statistics([prediction], [[reference]])
    return sentence, [float(x) for x in stats]


def chrf_example(prediction: str, reference: str) -> tuple[float, list]:
    """(sentence chrF, the character/word n-gram statistics corpus chrF sums)."""
    sentence = _chrf().sentence_score(prediction, [reference]).score
    [stats] = _chrf()._extract_corpus_statistics([prediction], [[reference]])
    return sentence, [float(x) for x in stats]


def corpus_bleu(stats: Sequence[float]) -> float:
    """Corpus BLEU (0-100, sacrebleu's default exponential smoothing) from summed statistics.
    The tokenizer only shapes the statistics, so one reducer serves every ``bleu_tokenize``."""
    return float(_bleu()._compute_score_from_stats([int(round(x)) for x in stats]).score)


def corpus_chrf(stats: Sequence[float]) -> float:
    """Corpus chrF (0-100, beta 2, character 6-grams) from summed statistics."""
    return float(_chrf()._compute_score_from_stats([int(round(x)) for x in stats]).score)


# -- pass@k -------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: 1 - C(n - c, k) / C(n, k) (exact integer binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sample_passes(prediction: str, reference: str, check: str, pattern: str | None) -> bool:
    """Is one sample correct? ``exact_match`` (after strip), ``json_valid`` (holds a JSON
    object) or ``regex`` (``pattern`` found anywhere in the prediction)."""
    if check == "exact_match":
        return prediction.strip() == reference.strip()
    if check == "json_valid":
        return parse_json_object(prediction) is not None
    if check == "regex":
        return re.search(pattern or "", prediction) is not None
    raise ValueError(f"unknown pass check {check!r}")
