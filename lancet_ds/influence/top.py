"""`lancet-ds scores top`: the most positive and most negative training samples (paper, Table 8), by their
rise and fall over the query batches (`influence.ranking`)."""

from __future__ import annotations

from pathlib import Path

from lancet_ds.influence.ranking import most_negative, most_positive, scored_rows


def top_sides(run_dir: str | Path, n: int) -> dict[str, list[dict]]:
    """The `n` most positive rows (highest rise) and the `n` most negative (lowest fall)."""
    rows = scored_rows(run_dir)
    return {"positive": most_positive(rows)[:n], "negative": most_negative(rows)[:n]}


def top_tables(run_dir: str | Path, n: int):
    from rich.table import Table

    sides = top_sides(run_dir, n)
    tables = []
    for side, title, key in (("positive", "most positive (raise the undesirable responses)", "rise"),
                             ("negative", "most negative (suppress them)", "fall")):
        table = Table(title=title)
        for col in (key, "score", "id", "prompt", "response"):
            table.add_column(col, overflow="fold")
        for r in sides[side]:
            table.add_row(f"{r[key]:.4g}", f"{r['score']:.4g}", r["id"], r["prompt"], r["response"])
        tables.append(table)
    return tables
