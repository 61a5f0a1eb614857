"""Streaming TF-IDF with scikit-learn's `TfidfVectorizer` defaults, over corpora larger than memory.

Tokenisation is scikit-learn's own analyzer (lowercase, `(?u)\\b\\w\\w+\\b`, word unigrams); weights are
raw term counts × smooth idf, idf(t) = ln((1 + n) / (1 + df(t))) + 1, rows l2-normalised; similarity is
the cosine (a dot product of normalised rows). The vocabulary is every term of the corpus, as when
scikit-learn is fitted on it; query terms outside it are ignored. Two passes:

1. document frequencies, chunk by chunk (memory: the vocabulary);
2. each chunk is vectorised against the fixed vocabulary and scored against all queries, keeping each
   query's top-k by (similarity desc, sample id asc) (memory: one chunk plus k per query).

Each rank takes every world-size-th chunk; the frequency counts and the top-k lists are merged exactly.
Similarities are compared after rounding to 12 decimals, so float round-off cannot reorder ties.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Iterable, Iterator

import numpy as np

ROUND = 12


def analyzer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer().build_analyzer()


def chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def document_frequencies(texts: Iterable[str]) -> Counter:
    analyze = analyzer()
    df: Counter = Counter()
    for text in texts:
        df.update(set(analyze(text)))
    return df


class TfidfSpace:
    """A fixed vocabulary and idf, with scikit-learn's transform."""

    def __init__(self, df: Counter, n_docs: int):
        self.terms = sorted(df)
        self.vocabulary = {t: i for i, t in enumerate(self.terms)}
        counts = np.array([df[t] for t in self.terms], dtype=np.float64)
        self.idf = np.log((1.0 + n_docs) / (1.0 + counts)) + 1.0
        self.n_docs = n_docs

    def transform(self, texts: list[str]):
        from scipy.sparse import diags
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.preprocessing import normalize

        counts = CountVectorizer(vocabulary=self.vocabulary, dtype=np.float64).transform(texts)
        return normalize(counts @ diags(self.idf), norm="l2", copy=False)


class TopK:
    """Per query, the k best (similarity, id) pairs seen so far, ordered by similarity desc, id asc."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.heaps: list[list[tuple[float, "_Desc"]]] = [[] for _ in range(n_queries)]

    def offer(self, sims: np.ndarray, ids: list[str]) -> None:
        """`sims` is (n_queries, len(ids)) for one chunk."""
        sims = np.round(sims, ROUND)
        for q, row in enumerate(sims):
            heap = self.heaps[q]
            if len(ids) > self.k:  # keep every id tied with the k-th best of this chunk
                kth = np.partition(row, len(row) - self.k)[len(row) - self.k]
                cand = np.nonzero(row >= kth)[0]
            else:
                cand = range(len(ids))
            for j in cand:
                item = (float(row[j]), _Desc(ids[j]))
                if len(heap) < self.k:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)

    def merge(self, other: list[list[tuple[float, str]]]) -> None:
        for q, pairs in enumerate(other):
            for sim, sid in pairs:
                heap = self.heaps[q]
                item = (sim, _Desc(sid))
                if len(heap) < self.k:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)

    def result(self) -> list[list[tuple[float, str]]]:
        return [[(s, d.value) for s, d in sorted(h, reverse=True)] for h in self.heaps]


class _Desc:
    """Orders ids in reverse, so that in a min-heap of (sim, _Desc(id)) the smaller id wins a tie."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __lt__(self, other: "_Desc") -> bool:
        return self.value > other.value

    def __eq__(self, other) -> bool:
        return self.value == other.value

    def __gt__(self, other: "_Desc") -> bool:
        return self.value < other.value
