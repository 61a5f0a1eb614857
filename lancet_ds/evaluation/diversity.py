"""Diversity of generated text as the literature computes it (the paper's Table 3 columns; DESIGN.md
section 9): Self-BLEU as Texygen (Zhu et al. 2018) computes it, distinct-1/2 (Li et al. 2016), MSTTR and
unigram entropy as GEM-metrics / RL4LMs (Ramamurthy et al. 2022, followed by the paper) compute them.

Words are lower-cased tokens: runs of letters and digits, and each other non-space character alone (close
to NLTK's word_tokenize, which Texygen and GEM use). Empty generations (nothing after strip) are
counted as their own rate, `empty_rate`, and excluded from every other figure, as hypotheses and as
references: counted in, a collapsed model that says nothing would look diverse. A figure that is not
defined on what is left (no text, no full MSTTR window, fewer than two texts for Self-BLEU) is None."""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections import Counter

WORD = re.compile(r"\w+|[^\w\s]")
EPSILON = 0.1
"""NLTK SmoothingFunction().method1's epsilon: a zero n-gram match count becomes EPSILON / denominator."""


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _tokenized(texts: list[str]) -> list[list[str]]:
    """The non-empty generations' words (empty ones, nothing after strip, left out)."""
    return [words(t) for t in texts if t.strip()]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _bleu(matched: list[int], totals: list[int], hyp_len: int, ref_len: int) -> float:
    """NLTK's sentence_bleu with uniform weights 1/N and SmoothingFunction().method1, from the clipped
    match counts and hypothesis n-gram counts of orders 1..N: 0 when no unigram matches; a zero count
    becomes EPSILON / max(1, total), so an order longer than the hypothesis (no n-grams) counts 0.1, not
    full precision; brevity penalty exp(1 − r/c) against the closest reference length r (ties: shorter)."""
    if hyp_len == 0 or matched[0] == 0:
        return 0.0
    log_p = sum(math.log((m if m else EPSILON) / max(1, t)) for m, t in zip(matched, totals)) / len(matched)
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def _closest(lengths: list[int], hyp_len: int) -> int:
    return min(lengths, key=lambda r: (abs(r - hyp_len), r))


def bleu(hypothesis: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Sentence BLEU-`max_n` of one tokenized hypothesis against references, exactly as NLTK's
    `sentence_bleu(references, hypothesis, (1/max_n,)*max_n, SmoothingFunction().method1)`."""
    if not references:
        raise ValueError("bleu: no references; give at least one tokenized reference.")
    matched, totals = [], []
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        best: Counter = Counter()
        for ref in references:
            best |= _ngrams(ref, n)
        matched.append(sum(min(c, best[g]) for g, c in hyp.items()))
        totals.append(sum(hyp.values()))
    return _bleu(matched, totals, len(hypothesis), _closest([len(r) for r in references], len(hypothesis)))


def _top_counts(grams: list[list[Counter]], max_n: int) -> list[dict[tuple, list[int]]]:
    """Per order and n-gram, over texts: [largest count, texts at the largest, second largest count]."""
    tops: list[dict[tuple, list[int]]] = [{} for _ in range(max_n)]
    for per_text in grams:
        for n, counter in enumerate(per_text):
            for g, c in counter.items():
                top = tops[n].setdefault(g, [0, 0, 0])
                if c > top[0]:
                    top[:] = [c, 1, top[0]]
                elif c == top[0]:
                    top[1] += 1
                elif c > top[2]:
                    top[2] = c
    return tops


def _closest_other(sorted_lengths: list[int], counts: Counter, hyp_len: int) -> int:
    """The closest reference length among all texts but this one (NLTK's tie rule: the shorter)."""
    if counts[hyp_len] > 1:
        return hyp_len
    i = bisect_left(sorted_lengths, hyp_len)
    return _closest(sorted_lengths[max(0, i - 1):i] + sorted_lengths[i + 1:i + 2], hyp_len)


def self_bleu(texts: list[str], max_n: int = 4) -> float | None:
    """Self-BLEU as Texygen computes it: the mean over generations of `bleu(generation, all OTHER
    generations)` (higher: less diverse); None with fewer than two non-empty generations.

    Exactly the per-text `bleu`, in time linear in the number of n-grams (plus a sort of the lengths):
    each n-gram keeps its two largest counts over texts, so its clipping count against "every text but
    this one" is read off directly, and the closest other length comes from the sorted distinct lengths."""
    toks = _tokenized(texts)
    if len(toks) < 2:
        return None
    grams = [[_ngrams(t, n) for n in range(1, max_n + 1)] for t in toks]
    tops = _top_counts(grams, max_n)
    counts = Counter(len(t) for t in toks)
    distinct = sorted(counts)
    total = 0.0
    for t, per_text in zip(toks, grams):
        matched, totals = [], []
        for n, counter in enumerate(per_text):
            m = 0
            for g, c in counter.items():
                top, at_top, second = tops[n][g]
                m += min(c, top if (c < top or at_top > 1) else second)
            matched.append(m)
            totals.append(sum(counter.values()))
        total += _bleu(matched, totals, len(t), _closest_other(distinct, counts, len(t)))
    return total / len(toks)


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams, over the non-empty generations (n-grams
    never cross two generations); None when there is no n-gram."""
    counts: Counter = Counter()
    for t in _tokenized(texts):
        counts.update(_ngrams(t, n))
    total = sum(counts.values())
    return len(counts) / total if total else None


def msttr(texts: list[str], segment: int = 100) -> float | None:
    """Mean segmental type-token ratio (Johnson 1944; GEM's msttr-100): the non-empty generations' words
    joined, cut into consecutive `segment`-word windows, the last partial window dropped, and the windows'
    type/token ratios averaged; None when there is no full window."""
    tokens = [w for t in _tokenized(texts) for w in t]
    windows = [tokens[i:i + segment] for i in range(0, len(tokens) - segment + 1, segment)]
    return sum(len(set(w)) / len(w) for w in windows) / len(windows) if windows else None


def token_entropy(texts: list[str]) -> float | None:
    """Shannon entropy in bits of the unigram word distribution over the non-empty generations (GEM's
    entropy-1, RL4LMs' diversity entropy); None when there is no word."""
    counts = Counter(w for t in _tokenized(texts) for w in t)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else None


def diversity(texts: list[str], max_n: int = 4, segment: int = 100) -> dict:
    """Every diversity figure of a model's generations: `self_bleu`, `distinct_1`, `distinct_2`, `msttr`,
    `entropy` (all over the non-empty generations), `empty_rate` (share empty after strip; None for no
    generation) and `generations` (how many, empty ones included)."""
    empty = sum(1 for t in texts if not words(t))
    return {"self_bleu": self_bleu(texts, max_n), "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2), "msttr": msttr(texts, segment), "entropy": token_entropy(texts),
            "empty_rate": empty / len(texts) if texts else None, "generations": len(texts)}
