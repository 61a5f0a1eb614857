"""Diversity of generated text, as the paper's Table 3 reports it: MSTTR, Self-BLEU, token entropy.
Words are lower-cased whitespace tokens."""

from __future__ import annotations

import math
from collections import Counter


def words(text: str) -> list[str]:
    return text.lower().split()


def msttr(texts: list[str], segment: int = 50) -> float:
    """Mean segmental type-token ratio: the type/token ratio of consecutive `segment`-word windows of
    all texts joined, averaged (a last partial window is dropped unless it is the only one)."""
    tokens = [w for t in texts for w in words(t)]
    if not tokens:
        return 0.0
    windows = [tokens[i:i + segment] for i in range(0, len(tokens) - segment + 1, segment)] or [tokens]
    return sum(len(set(w)) / len(w) for w in windows) / len(windows)


def token_entropy(texts: list[str]) -> float:
    """Entropy (nats) of the unigram word distribution over all texts."""
    counts = Counter(w for t in texts for w in words(t))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypothesis: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Sentence BLEU with add-one smoothing of the n-gram precisions and the brevity penalty."""
    if not hypothesis:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        best: Counter = Counter()
        for ref in references:
            best |= _ngrams(ref, n)
        matched = sum(min(c, best[g]) for g, c in hyp.items())
        log_p += math.log((matched + 1) / (sum(hyp.values()) + 1))
    closest = min((abs(len(r) - len(hypothesis)), len(r)) for r in references)[1] if references else 0
    bp = 1.0 if len(hypothesis) > closest else math.exp(1 - closest / max(len(hypothesis), 1))
    return bp * math.exp(log_p / max_n)


def self_bleu(texts: list[str], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others (higher: less diverse). Equal to calling `bleu`
    per text, in time linear in the number of n-grams: each n-gram keeps its two largest counts over
    texts, so the clipping count against "all texts but this one" is read off directly."""
    toks = [words(t) for t in texts]
    if len(toks) < 2:
        return 0.0
    grams = [[_ngrams(t, n) for n in range(1, max_n + 1)] for t in toks]
    tops: list[dict[tuple, list[int]]] = [{} for _ in range(max_n)]  # gram → [max, count at max, second]
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
    lengths = sorted(len(t) for t in toks)
    total = 0.0
    for t, per_text in zip(toks, grams):
        if not t:
            continue
        log_p = 0.0
        for n, counter in enumerate(per_text):
            matched = 0
            for g, c in counter.items():
                m, at_max, second = tops[n][g]
                other = m if (c < m or at_max > 1) else second
                matched += min(c, other)
            log_p += math.log((matched + 1) / (sum(counter.values()) + 1))
        others = list(lengths)
        others.remove(len(t))
        closest = min((abs(r - len(t)), r) for r in others)[1]
        bp = 1.0 if len(t) > closest else math.exp(1 - closest / len(t))
        total += bp * math.exp(log_p / max_n)
    return total / len(toks)
