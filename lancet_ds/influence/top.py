"""`lancet-ds scores top`: the most positive and most negative training samples (paper, Table 8)."""

from __future__ import annotations

from pathlib import Path

from lancet_ds.run_dir import RunDir
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_jsonl


def ranked(run_dir: str | Path) -> list[dict]:
    path = RunDir.of(run_dir).score_rows
    if not path.exists():
        raise ConfigError(f"{path}: missing. Run `lancet-ds score --run {run_dir}` first.")
    return sorted(read_jsonl(path), key=lambda r: (-r["score"], r["id"]))


def top_tables(run_dir: str | Path, n: int):
    from rich.table import Table

    rows = ranked(run_dir)
    sides = (("most positive (raise the undesirable responses)", rows[:n]),
             ("most negative (suppress them)", list(reversed(rows[-n:])) if len(rows) > n else list(reversed(rows))))
    tables = []
    for title, part in sides:
        table = Table(title=title)
        for col in ("score", "id", "prompt", "response"):
            table.add_column(col, overflow="fold")
        for r in part:
            table.add_row(f"{r['score']:.4g}", r["id"], r["prompt"], r["response"])
        tables.append(table)
    return tables
