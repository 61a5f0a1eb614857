"""`report.md`: the report for people, rendered from `report.json`'s content, with the plots."""

from __future__ import annotations

from lancet_ds.evaluation.gap import gap_closed
from lancet_ds.report.quality import RANKINGS

COLUMNS = (("model", "model"), ("query log-prob/token (seen)", "query_logprob_per_token"),
           ("held-out log-prob/token", "heldout_logprob_per_token"), ("harmful rate", "harmful_rate"),
           ("harmful score", "harmful_score"), ("helpful score", "helpful_score"), ("C-R", "c_r"),
           ("helpful score (allowed prompts)", "helpful_score_allowed"), ("seen harmful score", "seen_harmful_score"),
           ("seen helpful score", "seen_helpful_score"), ("seen C-R", "seen_c_r"),
           ("test ppl", "clean_perplexity"), ("Self-BLEU", "self_bleu"), ("distinct-2", "distinct_2"),
           ("MSTTR", "msttr"), ("entropy", "entropy"), ("empty", "empty_rate"))


def _with_ci(row: dict, key: str) -> str:
    ci = row.get(f"{key}_ci")
    return _fmt(row.get(key)) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out + [""]


def _judges(judges: dict) -> list[str]:
    """Which judges graded the table (a grade compares only with grades by the same judge, same sha256)."""
    if not judges:
        return []
    parts = []
    for role, j in judges.items():
        metrics = j.get("metrics") or {}
        said = [j["format"], f"sha256 {j['sha256'][:12]}"] + ([f"label {j['label']}"] if "label" in j else [])
        said += [f"held-out accuracy {metrics['accuracy']:.3f}"] if "accuracy" in metrics else []
        said += [f"reward data version {metrics['data_version']}"] if "data_version" in metrics else []
        parts.append(f"{role}: `{j['path']}` ({', '.join(said)})")
    return ["**Judges.** " + "; ".join(parts) + ". Grades by a judge with another sha256 do not compare with these.",
            ""]


def _harm_by_category(evaluation: list[dict], shown: dict[str, int]) -> list[str]:
    """Each model's harmful score per prompt category, how many influence queries showed that category (when
    the queries carry categories), and the share of the impure → safe gap the corrected model closes there
    (`gap_closed`, per category; a point estimate)."""
    by = {r["model"]: r["harm_by_category"] for r in evaluation if r.get("harm_by_category")}
    if not by:
        return []
    gap = {"impure", "corrected", "safe"} <= set(by)
    header = ["category", "prompts"] + (["influence queries"] if shown else []) + list(by) + (["gap closed"] * gap)
    rows = []
    for cat in sorted({c for cats in by.values() for c in cats}):
        cells = [by[m].get(cat) for m in by]
        row = [cat, max(c["prompts"] for c in cells if c)] + ([shown.get(cat, 0)] if shown else [])
        row += [_with_ci(c, "harmful_score") if c else "–" for c in cells]
        if gap:
            row.append(gap_closed(*(by[m].get(cat, {}) for m in ("impure", "safe", "corrected"))))
        rows.append(row)
    return (["### Harm by category", ""] + _table(header, rows)
            + ["Harmful score on each category's unseen forbidden prompts [95 % bootstrap interval over them]; gap "
               "closed: (impure − corrected) / (impure − safe). A category the influence queries do not show tells "
               "whether the correction reached beyond them.", ""])


def _selection_sentence(sel: dict, correction: dict) -> str:
    """The selection's sizes, the correction run, what kept samples out of D⁺ and D⁻, and the neutral samples whose
    likelihood was raised (correct's summary)."""
    return (f"{sel['positive']} positive, {sel['negative']} negative, {sel['neutral']} neutral + {sel['replay']} replay "
            f"samples; {correction['method']} for {correction['steps']} steps, best checkpoint: "
            f"{_fmt((correction.get('best') or {}).get('step'))}. "
            + (f"It stopped at step {correction['stopped']['step']}: {correction['stopped']['reason']}. "
               if correction.get("stopped") else "")
            + f"{_fmt(sel.get('influential_both_ways'))} "
            "samples were influential both ways (raising one query batch, lowering another)."
            # a summary written before `barred_by` was recorded had only the negative ceiling to bar samples
            + (f" {sel['barred_from_negative']} were kept out of D⁻ by the {sel.get('barred_by') or 'negative ceiling'}."
               if sel.get("barred_from_negative") else "")
            + (f" {sel['unflagged_from_positive']} were kept out of D⁺: the positive judge does not flag them as "
               "harmful." if sel.get("unflagged_from_positive") else "")
            + (f" The correction also raised the likelihood of the {sel['neutral_likely']} neutral samples the positive "
               "judge passes (`neutral_likelihood`)." if "neutral_likely" in sel else ""))


def render_markdown(report: dict) -> str:
    job = report["job"]
    lines = ["# lancet_ds correction report", "",
             f"Model `{job['model']}`, corpus `{job['corpus']}`, queries `{job['queries']}`; influence: {job['method']}, "
             f"correction: {job['correction']}; {report['world_size']} rank(s). Corrected checkpoint: "
             f"`{report['export']['path']}` (tag {report['export']['tag']}).", "", "## Evaluation", ""]
    protocol = report.get("protocol", {})
    lines += [f"**Protocol.** The checkpoint was chosen by {protocol.get('checkpoint_chosen_by', '?')}; the table "
              "grades only evaluation files (" + ", ".join(f"{k} `{v['path']}`" for k, v in
                                                          protocol.get("evaluation", {}).items())
              + "), except its seen columns and seen log-prob, which read the influence queries by definition.", ""]
    lines += _judges(report.get("judges", {}))
    lines += _table([c for c, _ in COLUMNS], [[_with_ci(r, k) for _, k in COLUMNS] for r in report["evaluation"]])
    lines += ["Seen: the influence queries' responses; held-out: unseen prompts' undesirable answers (lower is "
              "corrected). Harmful rate / score, helpful score and C-R (harmful − helpful): sampled generations "
              "on unseen forbidden prompts as the judges read them; helpful score (allowed prompts): the same "
              "reward judge on unseen allowed requests (over-refusal or broken answers lower it); 95 % bootstrap "
              "intervals over prompts. Seen: the same scores on the influence queries' prompts (Table 3's seen "
              "columns); everything else is unseen.", ""]
    for name, v in report.get("versus_impure", {}).items():
        if "harmful_score_minus_impure" in v:
            lines += [f"{name} − impure, harmful score: {v['harmful_score_minus_impure']:+.4f} [{v['ci'][0]:+.4f}, "
                      f"{v['ci'][1]:+.4f}] — " + ("the interval excludes 0." if v["differs"] else
                                                  "**within sampling noise** (the interval contains 0)."), ""]
        if "clean_ppl_ratio" in v:
            low, high = v["clean_ppl_ratio_ci"]
            lines += [f"{name} / impure, clean perplexity: ×{v['clean_ppl_ratio']:.4f} [{low:.4f}, {high:.4f}] "
                      "(95 % paired bootstrap over the clean samples).", ""]
    lines += _harm_by_category(report["evaluation"], report.get("query_categories", {}))
    if "plots/validation.png" in report.get("plots", []):
        lines += ["![validation trajectory](plots/validation.png)", ""]
    if "plots/query_logprob.png" in report.get("plots", []):
        lines += ["![query log-prob per query](plots/query_logprob.png)", ""]
    pr = report.get("recall_pr_auc")
    if pr:
        lines += ["## Recall of known culprits", "",
                  f"{pr['labelled_positive']} labelled samples among {pr['candidates']} candidates.", ""]
        lines += _table(["ranking", "PR-AUC"], [[k, pr[k]] for k in RANKINGS if k in pr])
        totals = [f"{k} {pr[k + '_total']:.3f}" for k in RANKINGS if k + "_total" in pr]
        if totals:
            lines += ["Influence ranks the candidates by their rise over the query batches; ranked by Eq. 13's total "
                      f"instead (rises and falls summed): {', '.join(totals)}.", ""]
        if "plots/pr_curve.png" in report.get("plots", []):
            lines += ["![PR curves](plots/pr_curve.png)", ""]
    lines += ["## Influence scores", ""]
    if "plots/score_distribution.png" in report.get("plots", []):
        lines += ["![score distribution](plots/score_distribution.png)", ""]
    for side, title, key in (("positive", "Most positive (raise the undesirable responses)", "rise"),
                             ("negative", "Most negative (suppress them)", "fall")):
        lines += [f"### {title}", ""]
        lines += _table([key, "score (Eq. 13 total)", "id", "prompt", "response"],
                        [[r[key], r["score"], r["id"], r["prompt"], r["response"]] for r in report["top_samples"][side]])
    sel = report["selection"]
    lines += ["## Selection and correction", "", _selection_sentence(sel, report["correction"]), ""]
    comp = sel.get("composition")
    if comp:
        lines += _table(["set", "samples", "labelled culprits"],
                        [[k, v["samples"], v["labelled_positive"]] for k, v in comp.items() if isinstance(v, dict)])
        lines += [f"{comp['labelled_positive_unplaced']} of {comp['labelled_positive_scored']} scored culprits are in no "
                  f"set; {comp['in_both_positive_and_negative']} samples are in D⁺ for one batch and D⁻ for another.", ""]
    lines += ["## Counts and rejects", ""]
    lines += _table(["count", "value"], [[k, v] for k, v in report["counts"].items()])
    lines += _table(["stage", "rejected records"], [[k, v] for k, v in report["rejects"].items()] or [["all", 0]])
    lines += ["## Stage wall time (s)", ""]
    lines += _table(["stage", "seconds"], [[k, v] for k, v in report["stage_seconds"].items()])
    return "\n".join(lines)
