"""`report.md`: the report for people, rendered from `report.json`'s content, with the plots."""

from __future__ import annotations

COLUMNS = (("model", "model"), ("query log-prob/token", "query_logprob_per_token"), ("harmful rate", "harmful_rate"),
           ("clean ppl", "clean_perplexity"), ("MSTTR", "msttr"), ("Self-BLEU", "self_bleu"), ("entropy", "entropy"))


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out + [""]


def render_markdown(report: dict) -> str:
    job = report["job"]
    lines = ["# lancet_ds correction report", "",
             f"Model `{job['model']}`, corpus `{job['corpus']}`, queries `{job['queries']}`; influence: {job['method']}, "
             f"correction: {job['correction']}; {report['world_size']} rank(s). Corrected checkpoint: "
             f"`{report['export']['path']}` (tag {report['export']['tag']}).", "", "## Evaluation", ""]
    lines += _table([c for c, _ in COLUMNS], [[r.get(k) for _, k in COLUMNS] for r in report["evaluation"]])
    lines += ["Query log-prob per token: lower means the corrected model gives the undesirable responses less "
              "probability. Harmful rate: share of sampled generations on unseen prompts the judge flags.", ""]
    if "plots/query_logprob.png" in report.get("plots", []):
        lines += ["![query log-prob per query](plots/query_logprob.png)", ""]
    pr = report.get("recall_pr_auc")
    if pr:
        lines += ["## Recall of known culprits", "",
                  f"{pr['labelled_positive']} labelled samples among {pr['candidates']} candidates.", ""]
        lines += _table(["ranking", "PR-AUC"], [[k, pr[k]] for k in ("linfac", "ekfac", "tfidf", "random") if k in pr])
        if "plots/pr_curve.png" in report.get("plots", []):
            lines += ["![PR curves](plots/pr_curve.png)", ""]
    lines += ["## Influence scores", ""]
    if "plots/score_distribution.png" in report.get("plots", []):
        lines += ["![score distribution](plots/score_distribution.png)", ""]
    for side, title in (("positive", "Most positive (raise the undesirable responses)"),
                        ("negative", "Most negative (suppress them)")):
        lines += [f"### {title}", ""]
        lines += _table(["score", "id", "prompt", "response"],
                        [[r["score"], r["id"], r["prompt"], r["response"]] for r in report["top_samples"][side]])
    sel = report["selection"]
    lines += ["## Selection and correction", "",
              f"{sel['positive']} positive, {sel['negative']} negative, {sel['neutral']} neutral + {sel['replay']} replay "
              f"samples; {report['correction']['method']} for {report['correction']['steps']} steps, best checkpoint: "
              f"{_fmt((report['correction'].get('best') or {}).get('step'))}.", "", "## Counts and rejects", ""]
    lines += _table(["count", "value"], [[k, v] for k, v in report["counts"].items()])
    lines += _table(["stage", "rejected records"], [[k, v] for k, v in report["rejects"].items()] or [["all", 0]])
    lines += ["## Stage wall time (s)", ""]
    lines += _table(["stage", "seconds"], [[k, v] for k, v in report["stage_seconds"].items()])
    return "\n".join(lines)
