"""Recall quality against ground-truth labels (the paper's Figure 4 a–c): how well the influence scores'
ranking (`influence.ranking`), and TF-IDF similarity alone, rank the labelled samples among the recalled
candidates."""

from __future__ import annotations

from lancet_ds.data.records import culprit_labels, is_label
from lancet_ds.fileio import read_jsonl
from lancet_ds.influence.ranking import scored_rows
from lancet_ds.run_dir import RunDir


TFIDF_SCORES = "tfidf_scores"
"""`recall_pr_auc`'s name for scores that `score --by tfidf` made (TF-IDF similarity summed over query batches)."""
RANKINGS = ("linfac", "ekfac", TFIDF_SCORES, "tfidf", "random")
"""The rankings `recall_pr_auc` may hold, in the order the console and report.md show them."""


def _labelled(run: RunDir, label: str) -> tuple[list[dict], list[bool]] | None:
    """The run's scored rows (with their rise, `influence.ranking`) and labels; None without usable labels."""
    scored = scored_rows(run)
    y = culprit_labels([r["meta"] for r in scored], label)
    if not y or all(y) or not any(y):
        return None
    return scored, y


def labelled_scores(run: RunDir, label: str = "contaminated") -> tuple[list[str], list[bool], list[float]] | None:
    """(ids, labels, the ranking's scores: each candidate's rise) of the run's scored candidates; None without
    usable labels."""
    got = _labelled(run, label)
    if got is None:
        return None
    scored, y = got
    return [r["id"] for r in scored], y, [r["rise"] for r in scored]


def composition(run: RunDir, label: str | None) -> dict | None:
    """How many labelled culprits (and samples) are in D⁺, D⁻, the neutral set and the replay sample;
    None without labels. A culprit in D⁻ has its likelihood raised by IBO."""
    if not label or not run.selection.exists():
        return None
    meta = {r["id"]: r["meta"] for r in read_jsonl(run.score_rows)}
    if any(label in m and not is_label(m[label]) for m in meta.values()):
        return None
    out: dict = {}
    for row in read_jsonl(run.selection):
        side = out.setdefault(row["role"], {"samples": set(), "labelled_positive": set()})
        side["samples"].add(row["id"])
        if meta.get(row["id"], {}).get(label):
            side["labelled_positive"].add(row["id"])
    total = sum(bool(m.get(label)) for m in meta.values())
    result = {role: {k: len(v) for k, v in side.items()} for role, side in out.items()}
    both = out.get("positive", {}).get("samples", set()) & out.get("negative", {}).get("samples", set())
    placed = set().union(*(s["labelled_positive"] for s in out.values())) if out else set()
    return {**result, "labelled_positive_scored": total, "labelled_positive_unplaced": total - len(placed),
            "in_both_positive_and_negative": len(both)}


def tfidf_similarity(run: RunDir) -> dict[str, float]:
    """Each recalled sample's best TF-IDF similarity to any query."""
    best: dict[str, float] = {}
    if run.recall_rows.exists():
        for q in read_jsonl(run.recall_rows):
            for i, s in zip(q["ids"], q["similarities"]):
                best[i] = max(best.get(i, 0.0), s)
    return best


def recall_quality(run: RunDir, label: str = "contaminated") -> dict | None:
    """PR-AUC (average precision) at ranking the labelled samples among the candidates: `influence`, the scores'
    ranking (each candidate's rise, `influence.ranking`); `influence_total`, Eq. 13's total Σ_B |B|·I(z, B); and
    TF-IDF similarity alone, with the random baseline. None without labels."""
    from sklearn.metrics import average_precision_score

    got = _labelled(run, label)
    if got is None:
        return None
    scored, y = got
    out = {"candidates": len(y), "labelled_positive": sum(y), "random": sum(y) / len(y),
           "influence": float(average_precision_score(y, [r["rise"] for r in scored])),
           "influence_total": float(average_precision_score(y, [r["score"] for r in scored]))}
    best = tfidf_similarity(run)
    if best:
        out["tfidf"] = float(average_precision_score(y, [best.get(r["id"], 0.0) for r in scored]))
    return out
