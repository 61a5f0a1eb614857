"""Streaming TF-IDF recall equals scikit-learn's in-memory TfidfVectorizer, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest

from lancet_ds.recall.tfidf import (ROUND, ChunkCache, TfidfSpace, TopK, chunk_counts, chunked, document_frequencies,
                                   documents_per_term)


def sklearn_topk(docs: list[tuple[str, str]], queries: list[str], k: int) -> list[list[str]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer().fit([t for _, t in docs])
    sims = (vec.transform(queries) @ vec.transform([t for _, t in docs]).T).toarray()
    out = []
    for row in np.round(sims, ROUND):
        order = sorted(range(len(docs)), key=lambda j: (-row[j], docs[j][0]))
        out.append([docs[j][0] for j in order[:k]])
    return out


def streamed_topk(docs, queries, k, chunk_size, cache_dir, shards=1):
    """The stage's computation, with `shards` simulated ranks each taking every shards-th chunk."""
    chunks = list(chunked(docs, chunk_size))
    df, n = document_frequencies([]), 0
    caches = [ChunkCache(cache_dir / f"rank{r}") for r in range(shards)]
    for j, c in enumerate(chunks):
        counts, terms = chunk_counts([t for _, t in c])
        df.update(dict(zip(terms, documents_per_term(counts).tolist())))
        caches[j % shards].save(counts, terms, [i for i, _ in c])
        n += len(c)
    space = TfidfSpace(df, n)
    q = space.transform(queries)
    merged = TopK(len(queries), k)
    for cache in caches:
        best = TopK(len(queries), k)
        for counts, terms, ids in cache:
            best.offer((q @ space.weigh(counts, terms).T).toarray(), ids)
        merged.merge(best.result())
    return [[i for _, i in row] for row in merged.result()]


@pytest.fixture(scope="module")
def corpus(world_texts):
    docs = [(r["id"], f"{r['prompt']}\n{r['response']}") for r in world_texts.train]
    docs += [(f"dup-{i}", docs[i][1]) for i in range(0, 40, 4)]  # exact ties, broken by id
    queries = [f"{r['prompt']}\n{r['compliant_response']}" for r in world_texts.heldout[:12]]
    return docs, queries


@pytest.mark.parametrize("chunk_size, shards", [(10_000, 1), (37, 1), (37, 2), (5, 3)])
def test_topk_equals_sklearn(corpus, chunk_size, shards, tmp_path):
    docs, queries = corpus
    assert streamed_topk(docs, queries, 25, chunk_size, tmp_path, shards) == sklearn_topk(docs, queries, 25)


def test_idf_and_vectors_match_sklearn(corpus):
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs, queries = corpus
    texts = [t for _, t in docs]
    vec = TfidfVectorizer().fit(texts)
    space = TfidfSpace(document_frequencies(texts), len(texts))
    assert space.vocabulary == vec.vocabulary_
    assert np.allclose(space.idf, vec.idf_, rtol=0, atol=1e-12)
    assert abs(space.transform(queries) - vec.transform(queries)).max() < 1e-12


@pytest.mark.parametrize("texts", [
    ["Hello, world! a b_c x1 9 __ A-B", "", "tab\tsep\nnew-line; ok ok OK", "x"],           # ASCII fast path
    ["Ünïcode straße ΣΑΣ naïve café x y", "İstanbul ǅemal ﬁne", "plain words"],             # the pattern
    ["nul\x00inside a doc", "other doc"],                                                 # NUL: scikit-learn
    ["a b c", "d"],                                                                      # no term at all
])
def test_chunk_counts_equal_scikit_learn_counts(texts):
    from sklearn.feature_extraction.text import CountVectorizer

    counts, terms = chunk_counts(texts)
    try:
        cv = CountVectorizer()
        expected, names = cv.fit_transform(texts), list(cv.get_feature_names_out())
    except ValueError:  # scikit-learn refuses an empty vocabulary
        expected, names = None, []
    assert sorted(terms) == names and counts.shape == (len(texts), len(names))
    if names:
        assert (counts[:, np.argsort(terms)] != expected).nnz == 0
    assert list(documents_per_term(counts)) == [int((counts[:, j] > 0).sum()) for j in range(len(terms))]


def test_weigh_equals_transform(corpus):
    docs, _ = corpus
    texts = [t for _, t in docs]
    space = TfidfSpace(document_frequencies(texts), len(texts))
    counts, terms = chunk_counts(texts[:50])
    assert abs(space.weigh(counts, terms) - space.transform(texts[:50])).max() == 0
