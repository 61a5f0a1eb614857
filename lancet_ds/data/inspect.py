"""`lancet-ds data inspect`: read a corpus exactly as the stages will and summarise it."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.corpus import encode_samples, iter_samples
from lancet_ds.data.readers import detect_format
from lancet_ds.data.schemas import SchemaSpec


@dataclass
class CorpusReport:
    path: str
    format: str
    schema: str
    samples: int = 0
    fields: Counter = field(default_factory=Counter)
    token_lengths: list[int] = field(default_factory=list)
    response_tokens: list[int] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def length_stats(self, values: list[int]) -> dict[str, float] | None:
        if not values:
            return None
        ordered = sorted(values)
        return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 2),
                "p50": ordered[len(ordered) // 2], "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                "max": ordered[-1]}


def inspect_corpus(path: str | Path, spec: SchemaSpec, tokenizer=None, max_length: int = 512,
                   split: str | None = None) -> CorpusReport:
    """Every sample and every bad record of `path` (all of them, not just the first)."""
    report = CorpusReport(path=str(path), format=detect_format(path), schema=spec.name)
    sink = RejectSink(policy="fail", collect=True)
    samples = iter_samples(path, spec, sink, split)
    if tokenizer is None:
        for s in samples:
            report.samples += 1
            report.fields.update(s.meta.keys())
    else:
        for s, enc in encode_samples(samples, tokenizer, max_length, sink):
            report.samples += 1
            report.fields.update(s.meta.keys())
            report.token_lengths.append(len(enc.input_ids))
            report.response_tokens.append(enc.num_response_tokens)
    report.rejects = sink.rejects
    return report


def print_report(report: CorpusReport, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{report.path} ({report.format}, schema {report.schema})")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("samples", str(report.samples))
    table.add_row("bad records", str(len(report.rejects)))
    table.add_row("extra fields", ", ".join(f"{k} ({v})" for k, v in sorted(report.fields.items())) or "-")
    for name, values in (("tokens per sample", report.token_lengths), ("response tokens", report.response_tokens)):
        stats = report.length_stats(values)
        if stats:
            table.add_row(name, "  ".join(f"{k} {v}" for k, v in stats.items()))
    console.print(table)
    for r in report.rejects:
        console.print(f"[red]bad record[/red] {escape(r['location'])}: {escape(r['reason'])}", highlight=False, soft_wrap=True)
