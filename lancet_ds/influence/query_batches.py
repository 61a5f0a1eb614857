"""Batch queries (Eq. 13): influence queries clustered with k-means on TF-IDF vectors of their text;
V_B is the mean of the batch's query gradients. k = number of queries gives single-query mode."""

from __future__ import annotations

from lancet_ds.data.records import Sample


def query_text(s: Sample) -> str:
    return f"{s.prompt}\n{s.response}"


def cluster_queries(queries: list[Sample], k: int | str, seed: int) -> list[list[str]]:
    """Query ids per batch: k-means (k-means++, 10 restarts, seeded) on TF-IDF of prompt + response;
    `k="all"` (or k ≥ number of queries) puts each query in its own batch. Batches are ordered by their
    first query's position, members in input order."""
    n = len(queries)
    if k == "all" or int(k) >= n:
        return [[q.id] for q in queries]
    k = int(k)
    if k < 1:
        raise ValueError("k must be at least 1 or 'all'")
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer().fit_transform([query_text(q) for q in queries])
    labels = KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(x)
    groups: dict[int, list[str]] = {}
    for q, label in zip(queries, labels):
        groups.setdefault(int(label), []).append(q.id)
    return sorted(groups.values(), key=lambda ids: [q.id for q in queries].index(ids[0]))
