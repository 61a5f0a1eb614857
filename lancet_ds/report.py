"""Numbers for the job's report: recall quality against ground-truth labels, selection sizes, the
evaluation table, stage timings (`report.json`)."""

from __future__ import annotations

from pathlib import Path

from lancet_ds.fileio import read_json, read_jsonl


def recall_quality(run: Path, label: str = "contaminated") -> dict | None:
    """PR-AUC (average precision) of the influence score and of TF-IDF similarity alone at ranking the
    labelled samples among the candidates, with the random baseline; None without labels."""
    from sklearn.metrics import average_precision_score

    scored = list(read_jsonl(run / "scores" / "scores.jsonl"))
    if not scored or any(label not in r["meta"] for r in scored):
        return None
    y = [bool(r["meta"][label]) for r in scored]
    if not any(y) or all(y):
        return None
    best: dict[str, float] = {}
    if (run / "recall" / "recall.jsonl").exists():
        for q in read_jsonl(run / "recall" / "recall.jsonl"):
            for i, s in zip(q["ids"], q["similarities"]):
                best[i] = max(best.get(i, 0.0), s)
    out = {"candidates": len(scored), "labelled_positive": sum(y), "random": sum(y) / len(y),
           "influence": float(average_precision_score(y, [r["score"] for r in scored]))}
    if best:
        out["tfidf"] = float(average_precision_score(y, [best.get(r["id"], 0.0) for r in scored]))
    return out


def build_report(run: Path, timings: dict[str, float]) -> dict:
    correct = read_json(run / "correct" / "summary.json")
    report = {"stage_seconds": timings, "recall_pr_auc": recall_quality(run),
              "selection": correct["selection"], "correction": {k: correct[k] for k in ("method", "steps", "best", "export_tag")},
              "export": read_json(run / "export.json"), "evaluation": read_json(run / "eval.json")["models"]}
    for row in report["evaluation"]:
        row.pop("examples", None)
    return report
