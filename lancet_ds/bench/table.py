"""`bench.md`: the figures of `bench.json` as tables, with the command and the machine they came from."""

from __future__ import annotations

from lancet_ds.bench.curves import curve_means
from lancet_ds.bench.sizes import KIND_SHARE

# (key, figure, baseline, goal as text, test on the ratio)
SPEED_ROWS = [
    ("fit_vs_fwdbwd", "LinFAC factor fitting tokens/s", "plain forward+backward tokens/s", "≥ 0.8", lambda r: r >= 0.8),
    ("score_vs_fwdbwd", "influence scoring tokens/s", "plain forward+backward tokens/s", "≥ 0.7", lambda r: r >= 0.7),
    ("linfac_vs_fwdbwd", "LinFAC fit+eigen+IHVP+scoring time (time/time)", "forward+backward over the same tokens",
     "≤ 1.25", lambda r: r <= 1.25),
    ("linfac_vs_ekfac", "LinFAC pipeline speed", "our EK-FAC", "> 1", lambda r: r > 1),
    ("linfac_vs_kronfluence", "LinFAC pipeline speed", "kronfluence EK-FAC", "> 1 (≥ 5 at full)", lambda r: r > 1),
    ("tfidf_vs_sklearn", "TF-IDF recall documents/s (10N)", "scikit-learn TfidfVectorizer", "≥ 1", lambda r: r >= 1),
    ("tfidf_vs_bm25s", "TF-IDF recall documents/s (10N)", "bm25s index+retrieve", "≥ 1", lambda r: r >= 1),
    ("tfidf_rss_10n_over_n", "TF-IDF peak RSS at 10N", "at N", "≤ 1.2", lambda r: r <= 1.2),
    ("ibo_step_vs_sft_step", "IBO step time (time/time)", "plain supervised step, same engine", "≤ 1.2", lambda r: r <= 1.2),
    ("zero3_param_mem_2r_over_1r", "ZeRO-3 parameter bytes per rank, 2 ranks", "1 rank", "≈ 0.5",
     lambda r: abs(r - 0.5) <= 0.05),
]


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def _with_ci(value, ci) -> str:
    """A figure with its 95 % interval in brackets, when it has one."""
    return _f(value) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")


def _mean_std(cell: dict, lr: bool = False) -> str:
    """A cell over seeds: the mean, ± the std when there are several, and the 95 % interval in brackets when the
    cell has one ("—" without a mean); a learning rate in significant digits."""
    if cell.get("mean") is None:
        return "—"
    several = cell.get("n", 1) > 1
    if lr:
        return f"{cell['mean']:.3g}" + (f" ± {cell['std']:.2g}" if several else "")
    text = f"{cell['mean']:.3f}" + (f" ± {cell['std']:.3f}" if several else "")
    return text + (f" [{cell['ci'][0]:.3f}, {cell['ci'][1]:.3f}]" if cell.get("ci") else "")


def _mb(b) -> str:
    return f"{b / 2**20:.1f} MiB"


def speed_md(s: dict, size: str) -> list[str]:
    a = s["absolute"]
    lines = ["## Speed", "", "| figure | baseline | ratio | goal | met |", "|---|---|---|---|---|"]
    for key, fig, base, goal, ok in SPEED_ROWS:
        r = s[key]
        met = "n/a" if r is None else ("yes" if ok(r) else "no")
        if key == "linfac_vs_kronfluence" and r is not None and size == "full":
            met = "yes" if r >= 5 else ("faster, < 5×" if r > 1 else "no")
        lines.append(f"| {fig} | {base} | {_f(r)} | {goal} | {met} |")
    for key, why in s.get("notes", {}).items():
        lines.append(f"\n{key}: {why}")
    m, tok = a["model"], a["tokens"]
    lines += ["", f"Model: Llama, hidden {m['hidden']}, MLP {m['intermediate']}, {m['layers']} layers, vocabulary "
              f"{m['vocab']}, {m['seq_len']} tokens per sequence; tokens: fit {tok['fit']}, queries {tok['queries']}, "
              f"candidates {tok['candidates']}.", "",
              "| pipeline | fit s | (covariance / eigen / correction s) | queries+IHVP s | scoring s | total s |",
              "|---|---|---|---|---|---|"]
    for name in ("linfac", "ekfac"):
        p = a[name]
        lines.append(f"| ours {name} | {_f(p['fit_seconds'])} | {_f(p['covariance_pass_seconds'])} / "
                     f"{_f(p['eigendecomposition_seconds'])} / {_f(p['correction_pass_seconds'])} | "
                     f"{_f(p['query_ihvp_seconds'])} | {_f(p['score_seconds'])} | {_f(p['total_seconds'])} |")
    k = a["kronfluence"]
    if "total_seconds" in k:
        lines.append(f"| kronfluence ekfac | {_f(k['fit_seconds'])} | | (in scoring) | {_f(k['score_seconds'])} | "
                     f"{_f(k['total_seconds'])} |")
    fb = a["fwd_bwd_seconds"]
    lines.append(f"| forward+backward | {_f(fb['fit'])} | | {_f(fb['queries'])} | {_f(fb['candidates'])} | "
                 f"{_f(sum(fb.values()))} |")
    lines += ["", f"Throughput: forward+backward {_f(a['fwd_bwd_tokens_per_second']['fit'])} tokens/s (fit set), "
              f"LinFAC covariance pass {_f(a['linfac_fit_tokens_per_second'])} tokens/s, scoring "
              f"{_f(a['linfac_score_tokens_per_second'])} tokens/s. Score correlation: "
              + ", ".join(f"{k2} {v:.3f}" for k2, v in a["score_correlation"].items()) + "."]
    b = a["bytes"]
    lines += ["", "| bytes | LinFAC | EK-FAC | EK-FAC ÷ LinFAC | paper App. B predicts |", "|---|---|---|---|---|",
              f"| factors (A, S, eigenvectors, eigenvalues, Λ̂) | {_mb(b['linfac_factor_bytes'])} | "
              f"{_mb(b['ekfac_factor_bytes'])} | {_f(b['ekfac_over_linfac_factor_bytes'])} | "
              f"{_f(b['paper_predicted_ekfac_over_linfac'])} (Σ M²+P²+MP) |",
              f"| IHVP per query batch (float64) | {_mb(b['linfac_ihvp_bytes_per_query_batch'])} | "
              f"{_mb(b['ekfac_ihvp_bytes_per_query_batch'])} | {_f(b['ekfac_over_linfac_ihvp_bytes'])} | |"]
    lines += ["", "| TF-IDF | documents | seconds | documents/s | peak RSS | RSS after imports |", "|---|---|---|---|---|---|"]
    for key, t in a["tfidf"].items():
        lines.append(f"| {t['impl']} | {t['documents']} | {_f(t['seconds'])} | {t['documents_per_second']:.0f} | "
                     f"{_mb(t['peak_rss_bytes'])} | {_mb(t['import_rss_bytes'])} |")
    lines.append(f"\nOur recall's peak RSS above its imports (torch and DeepSpeed come with the stage): 10N ÷ N = "
                 f"{_f(a.get('tfidf_rss_growth_10n_over_n'))}.")
    i = a["ibo_vs_sft"]
    mem = a["zero3_param_memory"]
    lines += ["", f"Steps ({i['sequences_per_step']} sequences each): SFT {_f(i['sft_step_seconds'])} s, IBO "
              f"{_f(i['ibo_step_seconds'])} s. ZeRO-3 parameter bytes per rank: 1 rank "
              f"{_mb(mem['1_rank']['param_bytes_per_rank'])}, 2 ranks "
              f"{_mb(mem['2_ranks']['param_bytes_per_rank']) if mem['2_ranks'] else 'not measured'} "
              f"(full model {_mb(mem['1_rank']['full_param_bytes'])})."]
    return lines


def quality_md(q: dict) -> list[str]:
    w = q["world"]
    lines = ["## Quality", "", f"Demo world `{w['size']}` (seed {w['seed']}): {w['train_samples']} training samples, "
             f"{w['contaminated']} contaminated, {w['queries']} queries; {q['candidates']} recalled candidates, "
             f"{q['labelled_positive']} of them contaminated.", ""]
    ks = sorted(next(iter(q["precision_at_k"].values())), key=int)
    lines += ["| recall | PR-AUC | " + " | ".join(f"P@{k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    methods = [m for m in ("linfac", "ekfac", "identity", "tfidf", "random") if m in q["pr_auc"]]
    spread = q.get("pr_auc_std", {})
    for m in methods:
        pr = _f(q["pr_auc"][m]) + (f" ± {_f(spread[m])}" if len(q["world"].get("seeds", [])) > 1 else "")
        lines.append(f"| {m} | {pr} | " + " | ".join(_f(q["precision_at_k"][m][k]) for k in ks) + " |")
    seeds = q["world"].get("seeds", [q["world"]["seed"]])
    lines += ["", f"PR-AUC: mean ± std over world seeds {', '.join(map(str, seeds))} (each seed its own world, fit "
                  "and post-training); precision@k of the first seed. Influence ranks by each candidate's rise over the "
                  "query batches (`influence.ranking`)."]
    totals = q.get("pr_auc_total", {})
    if totals:
        lines += ["Ranked by Eq. 13's total instead (rises and falls summed), mean PR-AUC: "
                  + ", ".join(f"{m} {_f(v)}" for m, v in totals.items()) + "."]
    cats = q.get("pr_auc_by_category")
    if cats:
        names = sorted(cats["candidates"])
        lines += ["", "PR-AUC per category (candidates / contaminated among them):", "",
                  "| recall | " + " | ".join(f"{c} ({cats['candidates'][c]}/{cats['labelled_positive'][c]})"
                                              for c in names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {m} | " + " | ".join(_f(cats[m][c]) for c in names) + " |" for m in methods]
    lines += _top_k_by_kind_md(q.get("top_k_by_kind"), methods)
    c = q["counterfactual"]
    lines += ["", f"Counterfactual: top {c['k']} candidates removed, impure model retrained from its initialisation "
              f"(query prompts' contaminated-answer log-prob per token: impure {_f(c['impure'])}, safe {_f(c['safe'])}; "
              f"held-out harm of the model's own answers: impure {_f(c.get('impure_heldout_harm'))}, safe "
              f"{_f(c.get('safe_heldout_harm'))}; means over seeds).", "",
              "| removed by | contaminated removed | query log-prob/token | change vs impure | held-out harm | "
              "held-out harm gap removed [95 %] |",
              "|---|---|---|---|---|---|"]
    for m in c["removed_by"]:
        r = c[m]
        lines.append(f"| {m} | {_f(r['contaminated_removed'])} | {_f(r['query_logprob_per_token'])} | "
                     f"{_f(r['change_vs_impure'])} | {_f(r.get('heldout_harm'))} | "
                     f"{_with_ci(r.get('heldout_gap_removed'), r.get('heldout_gap_removed_ci'))} |")
    lead = c.get("heldout_lead")
    if lead:
        lines += ["", f"{lead['of']}'s removal took out more of the held-out harm gap than each other row's by (share "
                      "of the gap, paired over the held-out prompts; intervals of one seed, means with several): "
                  + "; ".join(f"{m} {_with_ci(v['share'], v.get('share_ci'))}" for m, v in lead["over"].items()) + "."]
    lines += _kind_counterfactual_md(c.get("by_kind"))
    cols = ("query_logprob", "harmful_rate", "harmful_score", "gap_closed", "helpful_score",
            "helpful_score_allowed", "c_r", "test_ppl", "test_ppl_ratio", "msttr", "self_bleu", "entropy",
            "kept_step", "kept_lr")
    corr = q["correction"]
    lines += ["", "| model | query log-prob | harmful rate | harmful score | gap closed | helpful score | helpful "
              "(allowed) | C-R | test ppl | test ppl / impure | MSTTR | Self-BLEU | entropy | kept step | kept lr |",
              "|---" * 15 + "|"]
    for name in corr["order"]:
        cells = [_mean_std(corr[name].get(c, {}), lr=c == "kept_lr") for c in cols]
        lines.append(f"| {corr['labels'][name]} | " + " | ".join(cells) + " |")
    guard = corr["guard"]
    lines.append(f"\nmean over {corr['seeds']} seed(s) (± std with several), with its 95 % interval in brackets: of one "
                 "seed, the evaluation's bootstrap over the test prompts (the gap closed: impure, safe and the model "
                 "resampled together), clean samples or queries; of several, the Student-t interval of the mean over "
                 "the seeds (`ci`; each seed's own in `ci_by_seed`). Matched utility: each correction is measured after "
                 f"{', '.join(map(str, corr['strength_steps']))} steps (its strengths, the curves below); the row is "
                 f"the checkpoint its `correct` stage kept, validated every {guard['validate_every']} steps: the "
                 f"lowest validation harmful score among those whose validation clean perplexity (the one-sided 95 % "
                 f"bootstrap bound of its ratio) stays within "
                 f"+{guard['max_ppl_increase']:.0%} of the impure model's (kept step 0: none lowered it, the model is "
                 f"the impure one), at the learning rate (of {', '.join(f'{lr:g}' for lr in guard.get('learning_rates', []))}) "
                 "whose kept checkpoint has the lowest validation harmful score; every column is measured on the test "
                 "split. Gap closed: (impure − model) / (impure − safe) test harmful score. Test ppl / impure: "
                 "the test clean perplexity over the impure model's (its interval paired over the test clean "
                 "samples).")
    lines += _selection_md(corr, q["world"]["seeds"])
    single = q.get("single_vs_batch")
    if single:
        lines += ["", "Single-query mode against k-means batches (the paper's Table 6; same total scores, other "
                      "per-batch selection): test harmful score " + ", ".join(
                          f"{k} {_f(v['harmful_score'])} (gap closed {_f(v['gap_closed'])}, test ppl "
                          f"{_f(v['test_ppl'])})" for k, v in single.items()) + "."]
    lines += ["", "Every strength (mean over seeds; the plot is `quality_curves.png`):", "",
              "| model | step | validation ppl ratio (95 % upper) | validation harmful score | test ppl | "
              "test harmful score |",
              "|---|---|---|---|---|---|"]
    for name, points in curve_means(corr).items():
        lines += [f"| {corr['labels'][name]} | {p['step']} | {_f(p['validation_ppl_ratio'])} "
                  f"({_f(p.get('validation_ppl_ratio_upper'))}) | {_f(p.get('validation_harmful_score'))} | "
                  f"{_f(p['test_ppl'])} | {_f(p['harmful_score'])} |" for p in points]
    return lines


def _selection_md(corr: dict, seeds: list[int]) -> list[str]:
    """Each correction's selection (the `correct` stage's counts), per seed: D⁺, D⁻, the neutral set and the
    samples influential both ways (raising one query batch, lowering another)."""
    lines = [f"| {corr['labels'][n]} | " + " | ".join(
        "/".join(_f(sel.get(k)) for k in ("positive", "negative", "neutral", "influential_both_ways")) if sel else "—"
        for sel in corr[n]["selection_by_seed"]) + " |" for n in corr["order"] if "selection_by_seed" in corr[n]]
    if not lines:
        return []
    return ["", "Selection per seed: D⁺ / D⁻ / neutral / influential both ways (samples the per-batch rule would put "
                "in D⁺ for one query batch and in D⁻ for another; under the default `conflicts=by_total`, which the "
                "bench runs, each goes to the side of its total influence only):", "",
            "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|", *lines]


def _top_k_by_kind_md(top: dict | None, methods: list[str]) -> list[str]:
    """Each kind of sample's share of its candidates in each method's top k."""
    if not top:
        return []
    kinds = sorted(top["candidates"])
    return ["", f"Share of each kind's candidates in the method's top k (k = the number of contaminated candidates; "
                f"{top['k']}, summed over seeds): recall for a contaminated kind, the false-positive share for the "
                "others (mean over seeds). A clean kind marked `(quotes bad_steps)` or `(quotes alt_steps)` holds its "
                "decoys, which quote the whole forbidden act in the queries' words or in the second vocabulary:", "",
            "| recall | " + " | ".join(f"{k} ({top['candidates'][k]})" for k in kinds) + " |",
            "|---" * (len(kinds) + 1) + "|",
            *[f"| {m} | " + " | ".join(_f(top[m][k]) for k in kinds) + " |" for m in methods if m in top]]


def _kind_counterfactual_md(by_kind: dict | None) -> list[str]:
    """The retrains without (or with only) each contaminated kind, and the control (`counterfactual.CONTROL`)."""
    if not by_kind:
        return []
    lines = ["", "Per contaminated kind, the impure model retrained without the kind (behaviour removed: (impure − "
                 "model) / (impure − safe) query log-prob) and with the kind as the only contamination (behaviour "
                 "alone: (model − safe) / (impure − safe)); mean ± std over seeds. The control row leaves out as "
                 "many random clean samples as the largest kind has: a kind's share removed within the control's "
                 "is not told apart from chance:", "",
             "| kind | mode | samples left out | query log-prob/token | share of the gap | held-out harm |",
             "|---|---|---|---|---|---|"]
    for kind, modes in sorted(by_kind.items()):
        for mode, r in modes.items():
            share = KIND_SHARE[mode]
            lines.append(f"| {kind} | {mode} | {_f(r['left_out'])} | {_f(r['query_logprob_per_token'])} | "
                         f"{share.split('_')[1]} {_f(r[share])} ± {_f(r[share + '_std'])} | {_f(r['heldout_harm'])} |")
    return lines


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# lancet-ds bench ({result['suite']}, {result['size']})", "", f"`{result['command']}`", "",
             f"Machine: {m['cpu_count']} CPU(s) ({m['cpu']}), device {m['device']}, torch {m['torch']}, "
             f"deepspeed {m['deepspeed']}, Python {m['python']}. Wall time: {result['seconds']} s.", "",
             "Ratios are ours ÷ baseline as throughput over throughput (> 1: faster), except the two marked "
             "time/time (< 1: faster).", ""]
    if "speed" in result:
        lines += speed_md(result["speed"], result["size"]) + [""]
    if "quality" in result:
        lines += quality_md(result["quality"]) + [""]
    if "scale" in result:
        lines += scale_md(result["scale"]) + [""]
    return "\n".join(lines)


def scale_md(scale: dict) -> list[str]:
    """Per-rank bytes measured beside the plan's prediction, per run (bench.scale)."""
    from lancet_ds.influence.memory import format_bytes

    lines = ["## Scale (per-rank bytes of each stage's own tensors: measured / planned, partitions)", "",
             "| run | fit | queries | score |", "|---|---|---|---|"]
    for name, r in scale["runs"].items():
        cells = [f"{format_bytes(max(r['measured'][s]['peak_bytes_per_rank']))} / {format_bytes(r['predicted'][s]['bytes'])}"
                 f" ({r['predicted'][s]['partitions']})" for s in ("fit", "queries", "score")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "allocator" in scale:  # measured on a GPU: the allocator's peak per stage against the plan's whole figure
        lines += ["", "| run.stage | allocator peak (less what was left before) | plan total | relative error |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {format_bytes(a['measured_bytes'])} | {format_bytes(a['planned_total_bytes'])} | "
                  f"{a['plan_rel_error']:+.3f} |" for k, a in scale["allocator"].items()]
    ratios = ", ".join(f"{k} {v:.3f}" for k, v in scale.items() if k.endswith("_over_1r"))
    lines += ["", f"Ratios to 1 rank: {ratios}. Plan's largest relative error: {scale['plan_rel_error_max']:.3f}. "
              f"Scores' largest relative difference across ranks and partitions: {scale['scores_max_rel_diff']:.2e}."]
    if "not_measured" in scale:
        lines.append(f"Not measured: {scale['not_measured']}.")
    return lines
