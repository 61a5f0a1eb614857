"""One ranking of the candidates from their influence on every query batch: the order that recall is graded
by (`recall_pr_auc`), that `scores top` and the report's top samples show, and that the quality bench's
counterfactual removes.

Eq. 13's total over the queries, `score` = Σ_B |B|·I(z, B), adds a sample's rise on one batch to its falls on
the others. A culprit raises the undesirable responses of its own kind of query and can lower another kind's
(it competes with those answers), so in the total the falls cancel part of the rise. The ranking keeps them
apart: a candidate's rise R⁺(z) = Σ_B |B|·max(I(z, B), 0), the queries' behaviour it raises, orders the
positive side (the most positive samples first), and its fall R⁻(z) = Σ_B |B|·min(I(z, B), 0) the negative
side; R⁺ + R⁻ = `score`. With one query batch, or a sample of one sign on every batch, they are the total.

Chosen on the demo world's choosing seeds 15–17 by a rule written before the runs (mean LinFAC PR-AUC more
than 0.02 above the total's, behind it by no more than 0.02 on any seed): 0.597, 0.674 and 0.769 against
0.537, 0.596 and 0.742 (docs/correction-record.md, session 45). The correction's selection does not read it:
IBO draws D⁺ and D⁻ per batch (`ibo.selection`)."""

from __future__ import annotations

from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, read_jsonl
from lancet_ds.run_dir import RunDir


def rise_and_fall(per_batch: list[float], sizes: list[float]) -> tuple[float, float]:
    """(R⁺, R⁻) of one candidate from its I(z, B) per batch and the batches' sizes |B|."""
    weighted = [s * v for s, v in zip(sizes, per_batch, strict=True)]
    return sum(w for w in weighted if w > 0), sum(w for w in weighted if w < 0)


def batch_sizes(run: RunDir) -> list[float]:
    """|B| of every query batch of the run, in the order of the rows' `score_<b>`."""
    if not run.batches.exists():
        raise ConfigError(f"{run.batches}: missing, and the scores' ranking needs the query batches' sizes. "
                          f"Run `lancet-ds queries --run {run.root}` (or the job) first.")
    return [float(b["size"]) for b in read_json(run.batches)["batches"]]


def scored_rows(run: RunDir | str) -> list[dict]:
    """The rows of `scores/scores.jsonl`, each with its `rise` and `fall` (computed from `score_<b>`, so scores
    written before the fields existed rank the same way)."""
    run = RunDir.of(run)
    if not run.score_rows.exists():
        raise ConfigError(f"{run.score_rows}: missing. Run `lancet-ds score --run {run.root}` first.")
    sizes = batch_sizes(run)
    rows = list(read_jsonl(run.score_rows))
    for r in rows:
        r["rise"], r["fall"] = rise_and_fall([r[f"score_{b}"] for b in range(len(sizes))], sizes)
    return rows


def most_positive(rows: list[dict]) -> list[dict]:
    """The rows by rise, highest first (ties by id): the samples that raise the undesirable responses most."""
    return sorted(rows, key=lambda r: (-r["rise"], r["id"]))


def most_negative(rows: list[dict]) -> list[dict]:
    """The rows by fall, lowest first (ties by id): the samples that suppress them most."""
    return sorted(rows, key=lambda r: (r["fall"], r["id"]))
