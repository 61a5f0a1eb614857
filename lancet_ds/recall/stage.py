"""`lancet-ds recall`: for every influence query, the top-k training samples by TF-IDF cosine
similarity of prompt + response (DESIGN.md section 2), streamed over the corpus in chunks and sharded
over ranks (the corpus is read once: each rank spills its chunks' term counts to
`RUN_DIR/recall/cache-RRRRR/` and scores them from there, then removes it); `--score-all` skips recall and
marks the whole corpus as candidates.

Outputs under `RUN_DIR/recall/`: `recall.jsonl` (per query: `query_id`, `ids`, `similarities`),
`candidates.json` (the union of recalled ids, sorted) and `summary.json`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from dataclasses import dataclass
from collections import Counter

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import RejectSink, stage_sink
from lancet_ds.data.spec import DataSpec
from lancet_ds.fileio import read_json, read_jsonl, write_json, write_jsonl
from lancet_ds.influence.query_batches import query_text
from lancet_ds.recall.tfidf import ChunkCache, TfidfSpace, TopK, chunk_counts, chunked, documents_per_term
from lancet_ds.options import positive, recorded
from lancet_ds.run_dir import RunDir
from lancet_ds.stage_guard import finished, record, stage_fingerprint


def _my_chunks(samples, chunk_size: int):
    world, rank = dist_utils.world_size(), dist_utils.rank()
    for c, chunk in enumerate(chunked(samples, chunk_size)):
        if c % world == rank:
            yield chunk


@dataclass
class RecallArgs:
    """Options of the TF-IDF recall."""

    top_k: int = 100
    """Training samples recalled per query."""
    score_all: bool = False
    """Skip recall: every corpus sample is a candidate."""
    chunk_size: int = 10000
    """Documents per streamed chunk (memory grows with it)."""

    def validate(self) -> list[str]:
        return positive(self, "top_k", "chunk_size")


def run_recall(run: RunDir | str, corpus: DataSpec, queries: DataSpec, args: RecallArgs,
               overwrite: bool = False) -> dict:
    """The top-k candidates per query under `run.recall`; returns its summary."""
    dist_utils.init_distributed()
    run = RunDir.of(run)
    out = run.recall
    config = {"corpus": corpus.fingerprint(), "args": recorded(args), "lancet_ds_version": __version__}
    if not args.score_all:
        config["queries"] = queries.fingerprint()
    fingerprint = stage_fingerprint(out, config, inputs=(corpus.path, queries.path))
    if finished(out, run.recall_summary.name, fingerprint, overwrite, "recall", config):
        return read_json(run.recall_summary)
    sink = stage_sink(corpus.on_bad_record, out)
    corpus_samples = lambda: corpus.samples(sink)  # noqa: E731
    t0 = time.perf_counter()
    if args.score_all:
        n_docs = sum(1 for _ in corpus_samples())
        summary = {"all": True, "documents": n_docs, "candidates": n_docs}
    else:
        query_list = list(queries.samples(RejectSink("skip")))
        cache = ChunkCache(run.recall_cache(dist_utils.rank()))
        df, n_docs = Counter(), 0
        for chunk in _my_chunks(corpus_samples(), args.chunk_size):
            counts, terms = chunk_counts([query_text(s) for s in chunk])
            df.update(dict(zip(terms, documents_per_term(counts).tolist())))
            cache.save(counts, terms, [s.id for s in chunk])
            n_docs += len(chunk)
        parts = dist_utils.all_gather_object((df, n_docs))
        df = parts[0][0]
        for other, _ in parts[1:]:
            df.update(other)
        n_docs = sum(n for _, n in parts)
        space = TfidfSpace(df, n_docs)
        q_vectors = space.transform([query_text(q) for q in query_list])
        best = TopK(len(query_list), args.top_k)
        for counts, terms, ids in cache:
            best.offer((q_vectors @ space.weigh(counts, terms).T).toarray(), ids)
        shutil.rmtree(cache.directory, ignore_errors=True)
        merged = TopK(len(query_list), args.top_k)
        for part in dist_utils.all_gather_object(best.result()):
            merged.merge(part)
        result = merged.result()
        rows = [{"query_id": q.id, "ids": [i for _, i in r], "similarities": [s for s, _ in r]}
                for q, r in zip(query_list, result)]
        candidates = sorted({i for row in rows for i in row["ids"]})
        if dist_utils.is_main():
            write_jsonl(run.recall_rows, rows)
            write_json(run.candidates, candidates)
        summary = {"all": False, "documents": n_docs, "candidates": len(candidates), "top_k": args.top_k,
                   "queries": len(query_list), "vocabulary": len(space.terms)}
    seconds = time.perf_counter() - t0
    summary.update(seconds=round(seconds, 3), documents_per_second=round(summary["documents"] / max(seconds, 1e-9), 1),
                   rejects=sink.summary())
    record(out, fingerprint, config)
    if dist_utils.is_main():
        write_json(run.recall_summary, summary)  # the marker of a finished recall: written last
    dist_utils.barrier()
    say(f"recall: {summary['candidates']} candidates from {summary['documents']} documents "
        f"({summary['documents_per_second']:.0f} documents/s)")
    return summary


def batch_similarities(recall_rows: Path, batches: list[list[str]]) -> dict[str, list[float]]:
    """{sample id: [its best TF-IDF similarity to the queries of batch B, for every B]} from `recall.jsonl`;
    a sample outside a query's top-k counts 0 for it."""
    batch_of = {q: b for b, ids in enumerate(batches) for q in ids}
    out: dict[str, list[float]] = {}
    for row in read_jsonl(recall_rows):
        b = batch_of[row["query_id"]]
        for i, sim in zip(row["ids"], row["similarities"]):
            scores = out.setdefault(i, [0.0] * len(batches))
            scores[b] = max(scores[b], float(sim))
    return out
