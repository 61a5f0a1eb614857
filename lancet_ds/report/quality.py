"""Recall quality against ground-truth labels (the paper's Figure 4 a–c): how well the influence score,
and TF-IDF similarity alone, rank the labelled samples among the recalled candidates."""

from __future__ import annotations

from lancet_ds.fileio import read_jsonl
from lancet_ds.run_dir import RunDir


def labelled_scores(run: RunDir, label: str = "contaminated") -> tuple[list[str], list[bool], list[float]] | None:
    """(ids, labels, influence scores) of the run's scored candidates; None without usable labels."""
    scored = list(read_jsonl(run.score_rows))
    if not scored or any(label not in r["meta"] for r in scored):
        return None
    y = [bool(r["meta"][label]) for r in scored]
    if not any(y) or all(y):
        return None
    return [r["id"] for r in scored], y, [r["score"] for r in scored]


def tfidf_similarity(run: RunDir) -> dict[str, float]:
    """Each recalled sample's best TF-IDF similarity to any query."""
    best: dict[str, float] = {}
    if run.recall_rows.exists():
        for q in read_jsonl(run.recall_rows):
            for i, s in zip(q["ids"], q["similarities"]):
                best[i] = max(best.get(i, 0.0), s)
    return best


def recall_quality(run: RunDir, label: str = "contaminated") -> dict | None:
    """PR-AUC (average precision) of the influence score and of TF-IDF similarity alone at ranking the
    labelled samples among the candidates, with the random baseline; None without labels."""
    from sklearn.metrics import average_precision_score

    got = labelled_scores(run, label)
    if got is None:
        return None
    ids, y, scores = got
    out = {"candidates": len(y), "labelled_positive": sum(y), "random": sum(y) / len(y),
           "influence": float(average_precision_score(y, scores))}
    best = tfidf_similarity(run)
    if best:
        out["tfidf"] = float(average_precision_score(y, [best.get(i, 0.0) for i in ids]))
    return out
