"""Diversity figures against values computed by hand from their definitions: Self-BLEU as Texygen with
NLTK's sentence_bleu and SmoothingFunction().method1 (epsilon 0.1), distinct-n, MSTTR, entropy."""

from __future__ import annotations

import math
import random

import pytest

from lancet_ds.evaluation.diversity import bleu, distinct_n, diversity, msttr, self_bleu, token_entropy, words


def test_disjoint_texts_score_zero_not_add_one_smoothed():
    """No unigram matches: NLTK's BLEU is 0 (add-one smoothing gave 2-word disjoint texts 0.64)."""
    assert self_bleu(["a b", "c d"]) == 0.0


def test_orders_longer_than_the_text_count_epsilon_not_full_precision():
    """"a b" against "a c": p1 = 1/2, p2 = 0 → 0.1/1, p3 and p4 have no n-gram at all → 0.1/max(1, 0);
    equal lengths, so no brevity penalty: BLEU = (1/2 · 0.1³)^(1/4), for both texts."""
    expected = (0.5 * 0.1 ** 3) ** 0.25
    assert expected == pytest.approx(0.149534878)
    assert self_bleu(["a b", "a c"]) == pytest.approx(expected, rel=1e-12)
    # three identical words still miss the 4-gram order: 0.1^(1/4), not 1
    assert self_bleu(["same words here"] * 3) == pytest.approx(0.1 ** 0.25, rel=1e-12)


def test_identical_texts_score_one():
    assert self_bleu(["the cat sat on the mat"] * 4) == pytest.approx(1.0, rel=1e-12)
    assert self_bleu(["a b c d", "a b c d"]) == pytest.approx(1.0, rel=1e-12)


def test_brevity_penalty_and_zero_counts_with_longer_denominators():
    """"a b" vs "a b c d": p = 1, 1, 0.1, 0.1 and BP = exp(1 − 4/2);
    "a b c d" vs "a b": p = 2/4, 1/3, 0.1/2 (no trigram matches out of 2), 0.1/1, BP = 1 (4 > 2)."""
    short = math.exp(1 - 4 / 2) * (1 * 1 * 0.1 * 0.1) ** 0.25
    long = (2 / 4 * 1 / 3 * 0.1 / 2 * 0.1 / 1) ** 0.25
    assert bleu(["a", "b"], [["a", "b", "c", "d"]]) == pytest.approx(short, rel=1e-12)
    assert bleu(["a", "b", "c", "d"], [["a", "b"]]) == pytest.approx(long, rel=1e-12)
    assert self_bleu(["a b", "a b c d"]) == pytest.approx((short + long) / 2, rel=1e-12)


def test_closest_reference_length_ties_go_to_the_shorter():
    """Hypothesis of 3 words, references of 2 and 4: NLTK takes r = 2, so BP = 1 (c = 3 > 2);
    p = 3/3, 2/2, 1/1, and no 4-gram → 0.1."""
    assert bleu(["a", "b", "c"], [["a", "b"], ["a", "b", "c", "d"]]) == pytest.approx(0.1 ** 0.25, rel=1e-12)
    assert bleu(["a", "b", "c"], [["a", "b", "c", "d"], ["a", "b"]]) == pytest.approx(0.1 ** 0.25, rel=1e-12)


def test_clipping_against_the_best_single_reference():
    """"a a a" vs refs "a x" and "a a y": unigram clip = max count in one reference = 2 → p1 = 2/3;
    bigram (a, a) ×2, one in "a a y" → 1/2; trigram 0/1 → 0.1; no 4-gram → 0.1; closest length 3 → BP 1."""
    expected = (2 / 3 * 1 / 2 * 0.1 * 0.1) ** 0.25
    assert bleu(["a", "a", "a"], [["a", "x"], ["a", "a", "y"]]) == pytest.approx(expected, rel=1e-12)


def test_fast_self_bleu_equals_bleu_against_the_others():
    rng = random.Random(0)
    vocab = "a b c d the cat sat on mat".split()
    for _ in range(40):
        texts = [" ".join(rng.choice(vocab[:rng.randint(2, 9)]) for _ in range(rng.randint(0, 8)))
                 for _ in range(rng.randint(2, 7))]
        toks = [words(t) for t in texts if t.strip()]
        if len(toks) < 2:
            assert self_bleu(texts) is None
            continue
        slow = sum(bleu(t, toks[:i] + toks[i + 1:]) for i, t in enumerate(toks)) / len(toks)
        assert self_bleu(texts) == pytest.approx(slow, rel=1e-12, abs=1e-15)


def test_empty_generations_are_counted_and_excluded():
    texts = ["a b c d e", "a b c d e", "", "   "]
    d = diversity(texts)
    assert d["empty_rate"] == 0.5 and d["generations"] == 4
    assert d["self_bleu"] == pytest.approx(1.0)  # the empty ones are neither hypotheses nor references
    assert d["distinct_1"] == pytest.approx(5 / 10) and d["entropy"] == pytest.approx(math.log2(5))
    assert self_bleu(["a b", "a c", ""]) == self_bleu(["a b", "a c"])
    assert self_bleu(["only one", ""]) is None
    assert diversity(["", " \n"]) == {"self_bleu": None, "distinct_1": None, "distinct_2": None, "msttr": None,
                                      "entropy": None, "empty_rate": 1.0, "generations": 2}
    assert diversity([])["empty_rate"] is None


def test_distinct_n_counts_ngrams_within_each_generation():
    """Unigrams a b a | b a: 2 distinct of 5; bigrams (a b) (b a) | (b a): 2 of 3 (none across texts)."""
    assert distinct_n(["a b a", "b a"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a b a", "b a"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a", "b"], 2) is None
    d = diversity(["a b a", "b a"])
    assert (d["distinct_1"], d["distinct_2"]) == (pytest.approx(0.4), pytest.approx(2 / 3))


def test_msttr_full_windows_only():
    assert msttr(["a b a b"], segment=2) == pytest.approx(1.0)
    assert msttr(["a a a a"], segment=2) == pytest.approx(0.5)
    assert msttr(["a a", "b"], segment=3) == pytest.approx(2 / 3)  # windows run across generations
    assert msttr(["a b a"], segment=2) == pytest.approx(1.0)  # the partial window [a] is dropped
    assert msttr(["a b a"], segment=5) is None
    assert diversity(["w%d" % i for i in range(150)])["msttr"] == pytest.approx(1.0)  # one window of 100


def test_entropy_in_bits():
    assert token_entropy(["a b", "a b"]) == pytest.approx(1.0)
    assert token_entropy(["a a b c"]) == pytest.approx(1.5)  # p = 1/2, 1/4, 1/4
    assert token_entropy([""]) is None


def test_words_split_punctuation_and_lower_case():
    assert words("Sure. Step 1: Bend it!") == ["sure", ".", "step", "1", ":", "bend", "it", "!"]
