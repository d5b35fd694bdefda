"""ROUGE / BLEU / chrF / pass@k against hand-computed values, and the corpus-metric bootstrap."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from strop.eval import text_metrics as tm
from strop.eval.stats import paired_bootstrap, reduce_stats


def test_rouge_tokens_split_cjk_into_characters_and_lowercase_words():
    assert tm.rouge_tokens("The GPT-4 model, 发布了！ ok_go") == [
        "the",
        "gpt",
        "4",
        "model",
        "发",
        "布",
        "了",
        "ok",
        "go",
    ]
    assert tm.rouge_tokens("ひらがなカタカナ") == list("ひらがなカタカナ")
    assert tm.rouge_tokens("  ,.;! ") == []


def test_rouge_english_by_hand():
    pred, ref = "The cat sat on the mat.", "the cat is on the mat"
    # tokens: the cat sat on the mat / the cat is on the mat (6 each)
    # unigrams: overlap the x2, cat, on, mat = 5 -> P = R = 5/6
    assert tm.rouge_n(pred, ref, 1) == pytest.approx(5 / 6)
    # bigrams: {the cat, on the, the mat} shared of 5 each -> 3/5
    assert tm.rouge_n(pred, ref, 2) == pytest.approx(3 / 5)
    # LCS: the cat on the mat = 5 -> 5/6
    assert tm.rouge_l(pred, ref) == pytest.approx(5 / 6)


def test_rouge_chinese_by_hand():
    pred, ref = "猫坐在垫子上。", "猫在垫子上"
    # pred 猫 坐 在 垫 子 上 (6, the full stop is dropped), ref 猫 在 垫 子 上 (5)
    # ROUGE-1: overlap 5, P = 5/6, R = 1 -> F = 2 * 5/6 / (11/6) = 10/11
    assert tm.rouge_n(pred, ref, 1) == pytest.approx(10 / 11)
    # bigrams pred 猫坐 坐在 在垫 垫子 子上, ref 猫在 在垫 垫子 子上: overlap 3, P 3/5, R 3/4
    # F = 2 * (9/20) / (27/20) = 2/3
    assert tm.rouge_n(pred, ref, 2) == pytest.approx(2 / 3)
    # LCS 猫在垫子上 = 5 -> same as ROUGE-1 here
    assert tm.rouge_l(pred, ref) == pytest.approx(10 / 11)
    # Without character splitting the whole sentence would be one token and score 0.
    assert tm.rouge_n("今天天气很好", "今天天气不好", 1) == pytest.approx(5 / 6)


def test_rouge_l_is_order_sensitive_and_edge_cases():
    assert tm.rouge_n("a b c d", "d c b a", 1) == 1.0
    assert tm.rouge_l("a b c d", "d c b a") == pytest.approx(1 / 4)
    assert tm.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert tm.rouge_n("", "", 2) == 1.0
    assert tm.rouge_n("yes", "yes", 2) == 0.0  # no bigram on either side
    assert tm.rouge_l("x", "") == 0.0
    assert tm.rouge("a b", "a b") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_bleu_by_hand_and_corpus_from_summed_statistics():
    # hyp a b c d e vs ref a b c d f: precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty.
    sentence, stats = tm.bleu_example("a b c d e", "a b c d f")
    want = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert tm.corpus_bleu(stats) == pytest.approx(want)
    assert sentence == pytest.approx(want)
    hyps = ["the cat sat on the mat", "hello world", "a b c d e"]
    refs = ["the cat is on the mat", "hello there world", "a b c d f"]
    stats = [tm.bleu_example(h, r)[1] for h, r in zip(hyps, refs, strict=True)]
    corpus = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert reduce_stats(stats, "bleu") == pytest.approx(corpus)
    # The corpus score is not the mean of sentence scores.
    mean = sum(tm.bleu_example(h, r)[0] for h, r in zip(hyps, refs, strict=True)) / 3
    assert abs(mean - corpus) > 1


def test_bleu_zh_tokenizer_splits_chinese():
    _, plain = tm.bleu_example("猫坐在垫子上", "猫在垫子上")
    _, zh = tm.bleu_example("猫坐在垫子上", "猫在垫子上", tokenize="zh")
    assert tm.corpus_bleu(plain) == 0.0  # one "word" each, and they differ
    assert tm.corpus_bleu(zh) == pytest.approx(
        sacrebleu.corpus_bleu(["猫坐在垫子上"], [["猫在垫子上"]], tokenize="zh").score
    )
    assert tm.corpus_bleu(zh) > 0


def test_chrf_corpus_from_statistics_and_identity():
    hyps, refs = ["the cat sat", "猫在垫子上"], ["the cat sits", "猫坐在垫子上"]
    stats = [tm.chrf_example(h, r)[1] for h, r in zip(hyps, refs, strict=True)]
    assert reduce_stats(stats, "chrf") == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert tm.chrf_example("same text", "same text")[0] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("n", "c", "k", "want"),
    [
        (5, 2, 1, 2 / 5),  # pass@1 = c / n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # fewer than k wrong samples: some draw always passes
        (5, 0, 3, 0.0),
        (10, 1, 5, 1 - 126 / 252),  # C(9,5)/C(10,5) = 126/252 -> 0.5
    ],
)
def test_pass_at_k_by_hand(n, c, k, want):
    assert tm.pass_at_k(n, c, k) == pytest.approx(want)


def test_pass_at_k_matches_the_product_form_and_rejects_bad_k():
    # Chen et al.'s numerically stable form: 1 - prod_{i=n-c+1}^{n} (1 - k / i)
    n, c, k = 20, 7, 6
    prod = math.prod(1 - k / i for i in range(n - c + 1, n + 1))
    assert tm.pass_at_k(n, c, k) == pytest.approx(1 - prod)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        tm.pass_at_k(3, 1, 4)


def test_sample_checks():
    assert tm.sample_passes(" 42\n", "42", "exact_match", None)
    assert not tm.sample_passes("41", "42", "exact_match", None)
    assert tm.sample_passes('sure: {"a": 1}', "", "json_valid", None)
    assert not tm.sample_passes("{a: 1}", "", "json_valid", None)
    assert tm.sample_passes("the answer is 7.", "", "regex", r"answer is \d+")
    assert not tm.sample_passes("no answer", "", "regex", r"answer is \d+")


def test_corpus_bootstrap_resamples_statistics():
    hyps = ["a b c d", "e f g h", "i j k l", "m n o p"]
    refs = ["a b c d", "e f g x", "i j y z", "m q r s"]
    stats = [tm.bleu_example(h, r)[1] for h, r in zip(hyps, refs, strict=True)]
    same = paired_bootstrap(stats, stats, reduce="bleu", resamples=50)
    assert (same.delta, same.lo, same.hi) == (0.0, 0.0, 0.0)
    perfect = [tm.bleu_example(r, r)[1] for r in refs]
    d = paired_bootstrap(stats, perfect, reduce="bleu", resamples=200, seed=1)
    assert d.delta == pytest.approx(100 - reduce_stats(stats, "bleu"))
    assert d.lo <= d.delta <= d.hi and d.lo > 0
    with pytest.raises(ValueError, match="statistics arrays"):
        paired_bootstrap([1.0, 2.0], [1.0, 2.0], reduce="bleu")


def test_score_generations_means_sentence_metrics_and_pools_corpus_statistics():
    from strop.eval.config import GenerationTask
    from strop.eval.generation import score_generations

    task = GenerationTask(
        name="g",
        type="generation",
        data="x",
        metrics=["rouge", "bleu", "chrf"],
        temperature=1.0,
        n_samples=2,
        pass_at_k=[1, 2],
    )
    samples = [["the cat sat on the mat", "the cat"], ["hello world", "hello world"]]
    refs = ["the cat is on the mat", "hello world"]
    got = score_generations(task, samples, refs, ["a:1", "a:2"])
    # example 0: ROUGE-1 5/6 and, for "the cat" (P 1, R 2/6), F 1/2 -> mean 2/3
    assert got["rouge1"].scores == pytest.approx([2 / 3, 1.0])
    # corpus BLEU over all four samples, each paired with its example's reference
    hyps = [s for ss in samples for s in ss]
    refs4 = [r for r in refs for _ in range(2)]
    assert got["bleu"].value == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs4]).score)
    assert got["chrf"].value == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs4]).score)
    assert got["pass@1"].scores == [0.0, 1.0] and got["pass@2"].scores == [0.0, 1.0]
