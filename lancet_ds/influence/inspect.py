"""`lancet-ds factors inspect RUN_DIR`: a table of the stored factors, one row per sublayer."""

from __future__ import annotations

from pathlib import Path

from lancet_ds.run_dir import RunDir
from lancet_ds.influence.eigen import curvature_diagonal, default_damping
from lancet_ds.influence.factor_store import load_factors


def factor_rows(run_dir: str | Path) -> tuple[list[dict], dict]:
    factors, meta = load_factors(RunDir.of(run_dir).factors)
    rows = []
    for name in meta["sublayers"]:
        f = factors[name]
        diag = curvature_diagonal(f["LS"], f["LA"], f.get("Lambda"))
        top, low = float(diag.max()), float(diag.min())
        damping = default_damping(diag, meta["damping"]["factor"])
        rows.append({"sublayer": name, "A": tuple(f["A"].shape), "S": tuple(f["S"].shape),
                     "eig_A": (float(f["LA"].min()), float(f["LA"].max())),
                     "eig_S": (float(f["LS"].min()), float(f["LS"].max())),
                     "curvature": (low, top), "condition": (top + damping) / (low + damping), "damping": damping})
    return rows, meta


def factor_table(run_dir: str | Path):
    from rich.table import Table

    rows, meta = factor_rows(run_dir)
    table = Table(title=f"{meta['method']} factors in {run_dir}/factors: {meta['num_sequences']} sequences, "
                        f"{meta['num_tokens']} tokens, fisher={meta['fisher']}, "
                        f"eigen-corrected={meta['eigen_correction']}")
    for col in ("sublayer", "A", "S", "eig A (min..max)", "eig S (min..max)", "curvature diag (min..max)",
                "condition (damped)", "damping λ"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["sublayer"], "×".join(map(str, r["A"])), "×".join(map(str, r["S"])),
                      f"{r['eig_A'][0]:.2e}..{r['eig_A'][1]:.2e}", f"{r['eig_S'][0]:.2e}..{r['eig_S'][1]:.2e}",
                      f"{r['curvature'][0]:.2e}..{r['curvature'][1]:.2e}", f"{r['condition']:.3g}",
                      f"{r['damping']:.3e}")
    return table
