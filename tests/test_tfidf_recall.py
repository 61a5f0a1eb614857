"""Streaming TF-IDF recall equals scikit-learn's in-memory TfidfVectorizer, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest

from lancet_ds.recall.tfidf import ROUND, TfidfSpace, TopK, chunked, document_frequencies


def sklearn_topk(docs: list[tuple[str, str]], queries: list[str], k: int) -> list[list[str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer().fit([t for _, t in docs])
    sims = (vec.transform(queries) @ vec.transform([t for _, t in docs]).T).toarray()
    out = []
    for row in np.round(sims, ROUND):
        order = sorted(range(len(docs)), key=lambda j: (-row[j], docs[j][0]))
        out.append([docs[j][0] for j in order[:k]])
    return out


def streamed_topk(docs, queries, k, chunk_size, shards=1):
    """The stage's computation, with `shards` simulated ranks each taking every shards-th chunk."""
    chunks = list(chunked(docs, chunk_size))
    df, n = document_frequencies([]), 0
    for c in chunks:
        df.update(document_frequencies(t for _, t in c))
        n += len(c)
    space = TfidfSpace(df, n)
    q = space.transform(queries)
    merged = TopK(len(queries), k)
    for r in range(shards):
        best = TopK(len(queries), k)
        for c in chunks[r::shards]:
            best.offer((q @ space.transform([t for _, t in c]).T).toarray(), [i for i, _ in c])
        merged.merge(best.result())
    return [[i for _, i in row] for row in merged.result()]


@pytest.fixture(scope="module")
def corpus(world_texts):
    docs = [(r["id"], f"{r['prompt']}\n{r['response']}") for r in world_texts.train]
    docs += [(f"dup-{i}", docs[i][1]) for i in range(0, 40, 4)]  # exact ties, broken by id
    queries = [f"{r['prompt']}\n{r['compliant_response']}" for r in world_texts.heldout[:12]]
    return docs, queries


@pytest.mark.parametrize("chunk_size, shards", [(10_000, 1), (37, 1), (37, 2), (5, 3)])
def test_topk_equals_sklearn(corpus, chunk_size, shards):
    docs, queries = corpus
    assert streamed_topk(docs, queries, 25, chunk_size, shards) == sklearn_topk(docs, queries, 25)


def test_idf_and_vectors_match_sklearn(corpus):
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs, queries = corpus
    texts = [t for _, t in docs]
    vec = TfidfVectorizer().fit(texts)
    space = TfidfSpace(document_frequencies(texts), len(texts))
    assert space.vocabulary == vec.vocabulary_
    assert np.allclose(space.idf, vec.idf_, rtol=0, atol=1e-12)
    assert abs(space.transform(queries) - vec.transform(queries)).max() < 1e-12
