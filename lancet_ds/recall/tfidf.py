"""Streaming TF-IDF with scikit-learn's `TfidfVectorizer` defaults, over corpora larger than memory.

Tokenisation is scikit-learn's own analyzer (lowercase, `(?u)\\b\\w\\w+\\b`, word unigrams); weights are
raw term counts × smooth idf, idf(t) = ln((1 + n) / (1 + df(t))) + 1, rows l2-normalised; similarity is
the cosine (a dot product of normalised rows). The vocabulary is every term of the corpus, as when
scikit-learn is fitted on it; query terms outside it are ignored. One pass over the corpus:

1. each chunk's term counts (`chunk_counts`, the analyzer's output over the chunk's own terms) add to
   the document frequencies and are spilled to a per-rank cache on disk (`ChunkCache`: safetensors
   + JSON) (memory: the vocabulary plus one chunk);
2. each cached chunk is re-indexed to the fixed vocabulary, weighted and scored against all queries,
   keeping each query's top-k by (similarity desc, sample id asc) (memory: one chunk plus k per query).
   The corpus is read and tokenised once (reading and tokenising were most of the time of a second
   pass over it).

Each rank takes every world-size-th chunk; the frequency counts and the top-k lists are merged exactly.
Similarities are compared after rounding to 12 decimals, so float round-off cannot reorder ties.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

ROUND = 12
TOKEN_OR_SEPARATOR = re.compile(r"(?u)\x00|\b\w\w+\b")  # scikit-learn's token_pattern, or a document break
# ASCII text: every non-word character (not [A-Za-z0-9_]) becomes a space, so `split()` yields the maximal
# runs of word characters, which are the pattern's matches once runs of one character are dropped
ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) in "_\x00")})


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


def chunk_counts(texts: list[str]):
    """(counts, terms): the (len(texts) × len(terms)) CSR matrix of term counts scikit-learn's analyzer
    gives (lowercase, `(?u)\\b\\w\\w+\\b`), over the chunk's own terms in first-seen order. The chunk is
    lowercased and tokenised as one string with NUL between documents (ASCII text by `translate` +
    `split`, other text by the pattern); a text that contains NUL itself sends the chunk the slow way."""
    import pandas as pd
    from scipy.sparse import csr_matrix

    joined = "\x00".join(texts).lower()
    if joined.count("\x00") != len(texts) - 1:
        from sklearn.feature_extraction.text import CountVectorizer

        cv = CountVectorizer(dtype=np.float64)
        try:
            return cv.fit_transform(texts).tocsr(), list(cv.get_feature_names_out())
        except ValueError:  # no term at all
            return csr_matrix((len(texts), 0)), []
    if joined.isascii():
        tokens = joined.replace("\x00", " \x00 ").translate(ASCII_NON_WORD).split()
    else:
        tokens = TOKEN_OR_SEPARATOR.findall(joined)
    codes, uniques = pd.factorize(np.array(tokens + ["\x00"], dtype=object))
    codes, sep_code = codes[:-1], codes[-1]
    is_term = np.array([len(u) >= 2 for u in uniques], dtype=bool)
    is_term[sep_code] = False
    column = np.cumsum(is_term) - 1
    keep = is_term[codes]
    doc = np.cumsum(codes == sep_code)[keep]
    counts = csr_matrix((np.ones(int(keep.sum())), (doc, column[codes[keep]])), shape=(len(texts), int(is_term.sum())))
    return counts, [str(u) for u in uniques[is_term]]


def documents_per_term(counts) -> np.ndarray:
    """How many rows of a canonical CSR count matrix hold each column."""
    return np.bincount(counts.indices, minlength=counts.shape[1])


class ChunkCache:
    """Chunks of term counts spilled to `directory` between the two steps: per chunk, the CSR arrays as
    safetensors and the terms and sample ids as JSON."""

    def __init__(self, directory: Path):
        import shutil

        self.directory = directory
        shutil.rmtree(directory, ignore_errors=True)  # a cache left by an interrupted run
        directory.mkdir(parents=True)
        self.count = 0

    def save(self, counts, terms: list[str], ids: list[str]) -> None:
        from safetensors.numpy import save_file

        stem = self.directory / f"chunk-{self.count:06d}"
        save_file({"data": counts.data, "indices": counts.indices.astype(np.int64),
                   "indptr": counts.indptr.astype(np.int64), "shape": np.array(counts.shape, dtype=np.int64)},
                  str(stem.with_suffix(".safetensors")))
        stem.with_suffix(".json").write_text(json.dumps({"terms": terms, "ids": ids}))
        self.count += 1

    def __iter__(self):
        from safetensors.numpy import load_file
        from scipy.sparse import csr_matrix

        for c in range(self.count):
            stem = self.directory / f"chunk-{c:06d}"
            t = load_file(str(stem.with_suffix(".safetensors")))
            meta = json.loads(stem.with_suffix(".json").read_text())
            yield csr_matrix((t["data"], t["indices"], t["indptr"]), shape=tuple(t["shape"])), meta["terms"], meta["ids"]


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

    def weigh(self, counts, terms: list[str]):
        """`transform` of the texts whose `chunk_counts` are (counts, terms): the columns re-indexed to the
        vocabulary (sorted within rows, as scikit-learn's), then idf-weighted and l2-normalised."""
        from scipy.sparse import csr_matrix, diags
        from sklearn.preprocessing import normalize

        column = np.fromiter((self.vocabulary[t] for t in terms), dtype=np.int64, count=len(terms))
        m = csr_matrix((counts.data, column[counts.indices], counts.indptr), shape=(counts.shape[0], len(self.terms)))
        m.sort_indices()
        return normalize(m @ diags(self.idf), norm="l2", copy=False)


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
