"""Read a corpus the way every stage does: reader → schema adapter → (optionally) encoder, with the
bad-record policy applied at each step and ids checked for uniqueness."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.encoding import encode_sample
from lancet_ds.data.readers import iter_rows
from lancet_ds.data.records import EncodedSample, RawRow, Sample
from lancet_ds.data.schemas import SchemaSpec, adapt
from lancet_ds.errors import RecordProblem


def iter_samples(path: str | Path, spec: SchemaSpec, sink: RejectSink, split: str | None = None) -> Iterator[Sample]:
    """Every valid sample of `path`; unreadable rows, rows that do not fit the schema and duplicate
    ids go to `sink`."""
    seen: set[str] = set()
    for item in iter_rows(path, split=split):
        if not isinstance(item, RawRow):
            sink.reject(*item)
            continue
        try:
            samples = adapt(item, spec)
        except RecordProblem as exc:
            sink.reject(item.location, exc.reason, item.data)
            continue
        for s in samples:
            if s.id in seen:
                sink.reject(s.location, f"duplicate id {s.id!r}", item.data)
                continue
            seen.add(s.id)
            yield s


def read_encoded(path: str | Path) -> list[EncodedSample]:
    """An encoded set lancet_ds wrote (`id`, `input_ids`, `loss_mask` per line: fit set, query set)."""
    from lancet_ds.fileio import read_jsonl

    return [EncodedSample(r["id"], r["input_ids"], r["loss_mask"]) for r in read_jsonl(path)]


def encode_samples(samples, tokenizer, max_length: int, sink: RejectSink) -> Iterator[tuple[Sample, EncodedSample]]:
    """(sample, encoding) for each sample that keeps a response after truncation."""
    for s in samples:
        try:
            yield s, encode_sample(tokenizer, s, max_length)
        except RecordProblem as exc:
            sink.reject(s.location, exc.reason, {"id": s.id, "prompt": s.prompt, "response": s.response})


def load_encoded(path: str | Path, spec: SchemaSpec, tokenizer, max_length: int, sink: RejectSink,
                 split: str | None = None) -> tuple[list[Sample], list[EncodedSample]]:
    """The whole corpus, encoded, in memory: for the sets stages hold at once (fitting sets, queries,
    the demo world); the scoring stages stream instead."""
    pairs = list(encode_samples(iter_samples(path, spec, sink, split), tokenizer, max_length, sink))
    return [p[0] for p in pairs], [p[1] for p in pairs]
