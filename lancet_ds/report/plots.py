"""The report's PNG plots (matplotlib, no display): the influence score distribution, the PR curves of
recall against known labels, and the query log-prob per query before and after the correction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lancet_ds.data.records import culprit_labels
from lancet_ds.fileio import read_json, read_jsonl
from lancet_ds.influence.ranking import scored_rows
from lancet_ds.report.quality import labelled_scores, tfidf_similarity
from lancet_ds.run_dir import RunDir


def draw_plots(run: RunDir, spec, report: dict) -> list[str]:
    """Write RUN_DIR/plots/*.png; returns their paths relative to the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    out = run.plots
    out.mkdir(exist_ok=True)
    made = [_scores(run, spec, out), _pr_curves(run, spec, out), _queries(report, out), _validation(run, out)]
    return [str(p.relative_to(run.root)) for p in made if p is not None]


def _scores(run: RunDir, spec, out: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = list(read_jsonl(run.score_rows))
    scores = np.array([r["score"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(scores.min(), scores.max(), 40) if len(scores) else 10
    label = spec.corpus.label_field
    y = culprit_labels([r["meta"] for r in rows], label) if label else None
    if y is not None:
        y = np.array(y, dtype=bool)
        ax.hist(scores[~y], bins=bins, alpha=0.6, label=f"not {label}")
        ax.hist(scores[y], bins=bins, alpha=0.6, label=label)
        ax.legend()
    else:
        ax.hist(scores, bins=bins)
    ax.set(xlabel="influence score I (Eq. 9), summed over query batches", ylabel="candidates",
           title="influence score distribution")
    return _save(fig, out / "score_distribution.png")


def _pr_curves(run: RunDir, spec, out: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    label = spec.corpus.label_field
    got = labelled_scores(run, label) if label else None
    if got is None:
        return None
    ids, y, scores = got
    curves = {spec.stages["fit"].method.upper() if spec.stages["fit"].method == "ekfac" else "LinFAC": scores}
    compare = run.compare("ekfac")
    if spec.compare_ekfac and compare.score_rows.exists():
        by_id = {r["id"]: r["rise"] for r in scored_rows(compare)}
        curves["EK-FAC"] = [by_id[i] for i in ids]
    best = tfidf_similarity(run)
    if best:
        curves["TF-IDF"] = [best.get(i, 0.0) for i in ids]
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, s in curves.items():
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(r, p, label=f"{name} (AP {average_precision_score(y, s):.3f})")
    ax.axhline(sum(y) / len(y), color="grey", linestyle=":", label=f"random ({sum(y) / len(y):.3f})")
    ax.set(xlabel="recall", ylabel="precision", title=f"recall of '{label}' samples among candidates", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _save(fig, out / "pr_curve.png")


def _queries(report: dict, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    per = report["query_logprob_per_query"]
    if "impure" not in per or not per["impure"]:
        return None
    qids = sorted(per["impure"])
    models = ["impure"] + [m for m in per if m != "impure"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(qids) * len(models)), 3.5))
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        ax.bar(np.arange(len(qids)) + k * width, [per[m].get(q, np.nan) for q in qids], width, label=m)
    ax.set_xticks(np.arange(len(qids)) + 0.4 - width / 2, [q[-12:] for q in qids], rotation=60, fontsize=7)
    ax.set(ylabel="log-prob / token", title="query responses' log-prob per query (lower is corrected)")
    ax.legend()
    return _save(fig, out / "query_logprob.png")


def _validation(run: RunDir, out: Path) -> Path | None:
    """The post-training trajectory on the validation data: the checkpoint criterion against the step, with
    the chosen checkpoint marked, and the utility guard as it acts (`ibo.validation`): the clean perplexity
    over step 0's, the ratio's one-sided upper bound the guard reads (when the guard has a confidence level)
    and the limit."""
    import matplotlib.pyplot as plt

    rows = [r for r in read_jsonl(run.correct_log) if "value" in r] if run.correct_log.exists() else []
    if not rows:
        return None
    best = read_json(run.correct_summary).get("best") or {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["value"] for r in rows], marker="o", label=f"validation {rows[0].get('criterion', '')}")
    if "step" in best:
        ax.axvline(best["step"], color="grey", linestyle=":", label=f"chosen: step {best['step']}")
    ax.set(xlabel="step", ylabel="criterion (lower is better)", title="checkpoint choice on validation data")
    if any("clean_ppl_ratio" in r for r in rows):
        twin = ax.twinx()
        twin.plot(steps, [r.get("clean_ppl_ratio", np.nan) for r in rows], color="tab:red", marker=".",
                  label="clean perplexity / step 0's")
        if any("clean_ppl_ratio_upper" in r for r in rows):
            twin.plot(steps, [r.get("clean_ppl_ratio_upper", np.nan) for r in rows], color="tab:red",
                      linestyle=":", label="its upper bound (the guard reads this)")
        start = next((r for r in rows if r["step"] == 0 and "clean_perplexity" in r), None)
        if "ppl_limit" in best and start:
            twin.axhline(best["ppl_limit"] / start["clean_perplexity"], color="tab:red", linestyle="--",
                         label="guard's limit")
        twin.set_ylabel("clean perplexity ratio")
        twin.legend(loc="upper right", fontsize=7)
    ax.legend(loc="upper left", fontsize=7)
    return _save(fig, out / "validation.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
