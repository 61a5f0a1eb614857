"""TF-IDF recall speed and peak memory: our streaming `recall` stage against scikit-learn's in-memory
`TfidfVectorizer` and bm25s (index + retrieve), on the same JSONL corpus and queries, top-100 per query.
Each call runs in a process of its own (the bench starts one per implementation and corpus size), so the
peak RSS it reports (VmHWM of the process) belongs to that run alone; `import_rss_bytes` is the RSS
after the imports (for ours, also after forming the stage's one-rank process group, which imports
DeepSpeed), before any document is read."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np

TOP_K = 100


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM, which starts afresh at exec (`ru_maxrss` keeps the peak
    of the forked parent's image, here the bench's own process with torch loaded)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _texts(path: Path) -> list[str]:
    from lancet_ds.data.records import Sample
    from lancet_ds.influence.query_batches import query_text

    with open(path) as fh:
        return [query_text(Sample(r["id"], r["prompt"], r["response"], r["id"])) for r in map(json.loads, fh)]


def _ours(corpus: Path, queries: Path, work: Path) -> dict:
    from lancet_ds.data.spec import DataSpec
    from lancet_ds.recall.stage import RecallArgs, run_recall

    return {"vocabulary": run_recall(work, DataSpec(str(corpus)), DataSpec(str(queries)), RecallArgs(top_k=TOP_K),
                                     overwrite=True)["vocabulary"]}


def _sklearn(corpus: Path, queries: Path, work: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer()
    docs = vec.fit_transform(_texts(corpus))
    sims = (vec.transform(_texts(queries)) @ docs.T).toarray()
    np.argpartition(-sims, TOP_K - 1, axis=1)[:, :TOP_K]
    return {"vocabulary": len(vec.vocabulary_)}


def _bm25s(corpus: Path, queries: Path, work: Path) -> dict:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(_texts(corpus), stopwords=None, show_progress=False), show_progress=False)
    retriever.retrieve(bm25s.tokenize(_texts(queries), stopwords=None, show_progress=False), k=TOP_K,
                       show_progress=False)
    return {"vocabulary": len(retriever.vocab_dict)}


IMPLEMENTATIONS = {"ours": _ours, "sklearn": _sklearn, "bm25s": _bm25s}


def measure(impl: str, corpus: Path, queries: Path, work: Path) -> dict:
    """Seconds, documents/s and peak RSS of one implementation on one corpus."""
    if impl == "bm25s":
        import bm25s  # noqa: F401 - imported before the baseline RSS, like the others' libraries
    if impl == "ours":  # the stage's one-rank process group is formed before the clock, like the peers' imports
        from lancet_ds import distributed

        distributed.init_distributed()
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: F401

    n = sum(1 for _ in open(corpus))
    base = peak_rss()
    t0 = time.perf_counter()
    extra = IMPLEMENTATIONS[impl](corpus, queries, work)
    seconds = time.perf_counter() - t0
    return {"impl": impl, "documents": n, "seconds": seconds, "documents_per_second": n / seconds,
            "peak_rss_bytes": peak_rss(), "import_rss_bytes": base, **extra}
