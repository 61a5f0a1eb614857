"""`lancet-ds recall`: for every influence query, the top-k training samples by TF-IDF cosine
similarity of prompt + response (DESIGN.md section 2), streamed over the corpus in chunks and sharded
over ranks (the corpus is read once: each rank spills its chunks' term counts to
`RUN_DIR/recall/cache-RRRRR/` and scores them from there, then removes it); `--all` skips recall and
marks the whole corpus as candidates.

Outputs under `RUN_DIR/recall/`: `recall.jsonl` (per query: `query_id`, `ids`, `similarities`),
`candidates.json` (the union of recalled ids, sorted) and `summary.json`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from collections import Counter
from pathlib import Path

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import RejectSink, stage_sink
from lancet_ds.data.corpus import iter_samples
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, write_json, write_jsonl
from lancet_ds.fingerprint import json_fingerprint
from lancet_ds.influence.query_batches import query_text
from lancet_ds.recall.tfidf import ChunkCache, TfidfSpace, TopK, chunk_counts, chunked, documents_per_term
from lancet_ds.stage_guard import finished, record


def query_samples(run: Path, queries_path: str | None):
    """The influence queries as the queries stage read them (or from `queries_path`)."""
    if queries_path is None:
        cfg_path = run / "queries" / "stage_config.json"
        if not cfg_path.exists():
            raise ConfigError(f"{cfg_path}: missing. Run `lancet-ds queries --run {run}` first, or pass --queries.")
        cfg = read_json(cfg_path)["config"]
        queries_path, spec = cfg["queries"], SchemaSpec(**cfg["schema"])
    else:
        spec = SchemaSpec()
    return list(iter_samples(queries_path, spec, RejectSink("skip")))


def _my_chunks(samples, chunk_size: int):
    world, rank = dist_utils.world_size(), dist_utils.rank()
    for c, chunk in enumerate(chunked(samples, chunk_size)):
        if c % world == rank:
            yield chunk


def run_recall(run_dir: str, data_path: str, spec: SchemaSpec, top_k: int = 100, score_all: bool = False,
               chunk_size: int = 10000, on_bad_record: str = "fail", split: str | None = None,
               queries_path: str | None = None, overwrite: bool = False) -> dict:
    dist_utils.init_distributed()
    run = Path(run_dir)
    out = run / "recall"
    config = {"data": str(Path(data_path).resolve()), "schema": asdict(spec), "top_k": top_k, "all": score_all,
              "queries": queries_path, "lancet_ds_version": __version__}
    fingerprint = json_fingerprint(config)
    if finished(out, "summary.json", fingerprint, overwrite, "recall"):
        return read_json(out / "summary.json")
    sink = stage_sink(on_bad_record, out)
    corpus = lambda: iter_samples(data_path, spec, sink, split)  # noqa: E731
    t0 = time.perf_counter()
    if score_all:
        n_docs = sum(1 for _ in corpus())
        summary = {"all": True, "documents": n_docs, "candidates": n_docs}
    else:
        queries = query_samples(run, queries_path)
        cache = ChunkCache(out / f"cache-{dist_utils.rank():05d}")
        df, n_docs = Counter(), 0
        for chunk in _my_chunks(corpus(), chunk_size):
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
        q_vectors = space.transform([query_text(q) for q in queries])
        best = TopK(len(queries), top_k)
        for counts, terms, ids in cache:
            best.offer((q_vectors @ space.weigh(counts, terms).T).toarray(), ids)
        shutil.rmtree(cache.directory, ignore_errors=True)
        merged = TopK(len(queries), top_k)
        for part in dist_utils.all_gather_object(best.result()):
            merged.merge(part)
        result = merged.result()
        rows = [{"query_id": q.id, "ids": [i for _, i in r], "similarities": [s for s, _ in r]}
                for q, r in zip(queries, result)]
        candidates = sorted({i for row in rows for i in row["ids"]})
        if dist_utils.is_main():
            write_jsonl(out / "recall.jsonl", rows)
            write_json(out / "candidates.json", candidates)
        summary = {"all": False, "documents": n_docs, "candidates": len(candidates), "top_k": top_k,
                   "queries": len(queries), "vocabulary": len(space.terms)}
    seconds = time.perf_counter() - t0
    summary.update(seconds=round(seconds, 3), documents_per_second=round(summary["documents"] / max(seconds, 1e-9), 1),
                   rejects=sink.summary())
    record(out, fingerprint, config)
    if dist_utils.is_main():
        write_json(out / "summary.json", summary)  # the marker of a finished recall: written last
    dist_utils.barrier()
    say(f"recall: {summary['candidates']} candidates from {summary['documents']} documents "
        f"({summary['documents_per_second']:.0f} documents/s)")
    return summary
