"""`report.json` (keys documented in the README): stage timings, counts, rejects, recall PR-AUC when
labels exist (LinFAC vs EK-FAC vs TF-IDF vs random), selection sizes, the correction, the export, the
evaluation table with per-query log-probs, and the top positive and negative samples. Then
`report.md` and its plots."""

from __future__ import annotations

from collections import Counter

from lancet_ds import distributed as dist_utils
from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.corpus import iter_samples
from lancet_ds.export import exported
from lancet_ds.fileio import atomic_write_text, read_json, write_json
from lancet_ds.influence.top import top_sides
from lancet_ds.job.protocol import roles
from lancet_ds.report.quality import TFIDF_SCORES, composition, recall_quality
from lancet_ds.run_dir import REJECTS, RunDir

SNIPPET = 160
TOP_N = 5


def build_report(run: RunDir, spec) -> dict:
    manifest = read_json(run.manifest) if run.manifest.exists() else {"stages": {}}
    correct = read_json(run.correct_summary)
    results = read_json(run.eval_results)
    evaluation = results["models"]
    report = {
        "run_dir": str(run.root.resolve()),
        "world_size": dist_utils.world_size(),
        "job": {"model": spec.model, "corpus": spec.corpus.path, "queries": spec.queries.path,
                "method": spec.stages["fit"].method, "correction": spec.stages["correct"].method},
        "stage_seconds": {k: v.get("wall_seconds") for k, v in manifest["stages"].items() if "wall_seconds" in v},
        "counts": _counts(run),
        "rejects": {d.name: sum(1 for _ in open(d / REJECTS)) for d in (run.factors, run.queries, run.recall, run.scores,
                                                                         run.correct) if (d / REJECTS).exists()},
        "recall_pr_auc": _recall(run, spec),
        "selection": {**correct["selection"], "composition": composition(run, spec.corpus.label_field)},
        "protocol": roles(spec, spec.stages["correct"].criterion()),
        "versus_impure": results.get("versus_impure", {}),
        "judges": results.get("judges", {}),
        "correction": {k: correct[k] for k in ("method", "steps", "best", "export_tag", "seconds", "stopped")
                       if k in correct},
        "export": exported(run),
        "evaluation": [{k: v for k, v in r.items() if k not in ("examples", "query_logprob_per_query")} for r in evaluation],
        "query_logprob_per_query": {r["model"]: r.get("query_logprob_per_query", {}) for r in evaluation},
        "query_categories": _query_categories(spec),
        "top_samples": _top(run),
    }
    return report


def _counts(run: RunDir) -> dict:
    fit = read_json(run.factors_index)["metadata"]
    batches = read_json(run.batches)["batches"]
    recall = read_json(run.recall_summary)
    scores = read_json(run.scores_summary)
    return {"fit_sequences": fit["num_sequences"], "fit_tokens": fit["num_tokens"], "sublayers": len(fit["sublayers"]),
            "queries": sum(b["size"] for b in batches), "query_batches": len(batches),
            "corpus_documents": recall["documents"], "candidates": recall["candidates"],
            "scored": scores["candidates"], "positive_scores": scores["positive"]}


def _query_categories(spec) -> dict[str, int]:
    """How many influence queries carry each `category` (empty when they carry none): which kinds of the
    behaviour the correction was shown, beside the evaluation's harm by category."""
    q = spec.queries
    cats = Counter(s.meta.get("category") for s in iter_samples(q.path, q.schema, RejectSink("skip"), q.split))
    return {str(c): n for c, n in sorted(cats.items(), key=lambda kv: str(kv[0])) if c is not None}


def _recall(run: RunDir, spec) -> dict | None:
    label = spec.corpus.label_field
    if not label:
        return None
    main = recall_quality(run, label)
    if main is None:
        return None
    # the score's own name: the fit's method, or `tfidf_scores` when `score --by tfidf` ranked the candidates
    ranking = spec.stages["fit"].method if spec.stages["score"].by == "influence" else TFIDF_SCORES
    out = {**main, ranking: main["influence"], f"{ranking}_total": main["influence_total"]}
    compare = run.compare("ekfac")
    if spec.compare_ekfac and compare.score_rows.exists():
        ekfac = recall_quality(compare, label)
        out["ekfac"], out["ekfac_total"] = ekfac["influence"], ekfac["influence_total"]
    return out


def _top(run: RunDir) -> dict:
    def cut(r):
        return {"id": r["id"], "rise": r["rise"], "fall": r["fall"], "score": r["score"], "prompt": r["prompt"][:SNIPPET],
                "response": r["response"][:SNIPPET]}

    return {side: [cut(r) for r in rows] for side, rows in top_sides(run, TOP_N).items()}


def write_report(run: RunDir, spec) -> dict:
    """report.json, plots/*.png and report.md (rank 0); every rank returns the report."""
    from lancet_ds.report.markdown import render_markdown
    from lancet_ds.report.plots import draw_plots

    report = build_report(run, spec)
    if dist_utils.is_main():
        report["plots"] = draw_plots(run, spec, report)
        write_json(run.report_json, report)
        atomic_write_text(run.report_md, render_markdown(report))
    dist_utils.barrier()
    return read_json(run.report_json)
