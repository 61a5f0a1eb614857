"""The quality suite on the demo world (DESIGN.md section 6; the paper's Figure 4 a–c and Tables 3 and 7).

1. Recall: LinFAC, EK-FAC and identity (LinFAC's sublayers, H = I) runs of the stages (fit → queries → recall →
   score) on the impure model; PR-AUC (`report.recall_quality`: the rise ranking, and Eq. 13's total beside it;
   also per category) and precision@k of each,
   of TF-IDF similarity alone and of a random order at ranking the contaminated samples among the recalled
   candidates, and each kind of sample's share in each method's top k.
2. Counterfactual (`bench.counterfactual`): the impure model retrained without each method's top-k candidates,
   and without (or with only) each kind of contaminated sample; how much of the behaviour each removal took away.
3. Corrections (`sizes.CORRECTIONS`): IBO on LinFAC, EK-FAC and identity recall, PBO on LinFAC, EK-FAC (= PBU) and
   TF-IDF, GA on LinFAC and TF-IDF, LinFAC+LLM-UL, the human-correction baselines SFT-ER and DPO-ER (on the
   queries' corrected responses), each `correct` → `export` at several strengths → the evaluation's
   measurements on the test split, beside the impure and safe models, per seed, compared at matched utility
   (`corrections`), with the share of the impure → safe harmful-score gap closed.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

from lancet_ds.data.spec import DataSpec
from lancet_ds.demo_world.build import REWARD_JUDGE, SIZES, build_world
from lancet_ds.demo_world.corpus import quoted_act
from lancet_ds.evaluation.evaluate import EvalArgs, clean_ppl_ratio, judges_record, measure_model
from lancet_ds.evaluation.gap import gap_closed, gap_closed_ci
from lancet_ds.evaluation.judge import load_judge
from lancet_ds.export import ExportArgs, run_export
from lancet_ds.fileio import read_jsonl
from lancet_ds.ibo.correct import CorrectArgs, run_correct
from lancet_ds.ibo.objective import HUMAN_CORRECTION
from lancet_ds.influence.fit import FitArgs, fit_factors
from lancet_ds.influence.queries import QueriesArgs, run_queries
from lancet_ds.influence.ranking import most_positive, scored_rows
from lancet_ds.influence.score import ScoreArgs, run_scores
from lancet_ds.modeling import load_ds_config
from lancet_ds.recall.stage import RecallArgs, run_recall
from lancet_ds.run_dir import RunDir
from lancet_ds.bench import counterfactual
from lancet_ds.bench.shared_runs import link_parts
from lancet_ds.bench.sizes import CORRECTIONS, KIND_SHARE, METHOD_VARIANTS
from lancet_ds.job.demo import DEMO, ibo_judge_options
from lancet_ds.report import recall_quality
from lancet_ds.report.quality import tfidf_similarity

METRICS = ("query_logprob", "harmful_rate", "harmful_score", "helpful_score", "helpful_score_allowed", "c_r",
           "test_ppl", "test_ppl_ratio", "msttr", "self_bleu", "entropy", "kept_step", "kept_lr")
NAMES = {"impure": "impure", "safe": "safe", "linfac": "LinFAC", "linfac_single": "LinFAC(single)", "ekfac": "EK-FAC",
         "identity": "Identity", "tfidf": "TF-IDF", "ibo": "IBO", "ibo_paper": "IBO(paper L_COR)",
         "ibo_pareto": "IBO(Pareto)", "pbo": "PBO",
         "ga": "GA", "llm_ul": "LLM-UL", "sft_er": "SFT-ER", "dpo_er": "DPO-ER"}
CURVE_KEYS = ("step", "validation_ppl_ratio", "validation_ppl_ratio_upper", "test_ppl_ratio", "test_ppl_ratio_ci",
              "validation_harmful_score", "test_ppl", "harmful_score",
              "harmful_score_ci", "harmful_rate", "harmful_rate_ci", "gap_closed", "gap_closed_ci")
ROW_ORDER = ("impure", "safe") + CORRECTIONS
"""The correction table's rows, each under its own key in bench.json `quality.correction`: the reference models and
every correction by its `<recall>+<method>` (or its baseline's name), in the table's order."""
ROW_KEYS = {"clean_perplexity": "test_ppl", "clean_perplexity_ci": "test_ppl_ci",
            "query_logprob_per_token": "query_logprob", "query_logprob_per_token_ci": "query_logprob_ci"}
"""The evaluation's figures as the quality table names them (issue 14): the clean perplexity, on the test split,
`test_ppl`; the influence queries' log-prob per response token, `query_logprob`."""


def row_name(correction: str) -> str:
    """A row's display name: `linfac+ibo` → `LinFAC+IBO`."""
    return "+".join(NAMES[part] for part in correction.split("+"))


def curve_name(key: str) -> str:
    """A curve's display name: its correction's, with its learning rate when the bench tried several
    (`linfac+ibo@lr0.0001` → `LinFAC+IBO (lr 0.0001)`)."""
    correction, _, lr = key.partition("@lr")
    return row_name(correction) + (f" (lr {lr})" if lr else "")


def recall_runs(out: Path, world_dir: Path, size: str, ds_config: str, seed: int) -> dict[str, RunDir]:
    """The stages up to `score` for LinFAC, EK-FAC (on LinFAC's fit set) and `identity` (LinFAC's sublayers with
    H = I: plain gradient inner products), each reused when finished."""
    plan, max_length = DEMO[size], SIZES[size].max_length
    train, queries, model = DataSpec(str(world_dir / "train.jsonl")), DataSpec(str(world_dir / "queries.jsonl")), \
        str(world_dir / "impure")
    runs = {}
    for method in ("linfac", "ekfac", "identity"):
        run = RunDir(out / method)
        if method == "identity":
            link_parts(runs["linfac"], run, ("factors",))
        else:
            fit_factors(run, train, FitArgs(method=method, num_samples=plan["num_samples"],
                                            max_new_tokens=plan["max_new_tokens"], max_length=max_length, seed=seed,
                                            fit_set_from=str(runs["linfac"]) if runs else None),
                        model, ds_config)
        run_queries(run, queries, QueriesArgs(max_length=max_length, seed=seed, response_tokens=plan["response_tokens"],
                                              curvature="identity" if method == "identity" else "fitted"),
                    model, ds_config)
        run_recall(run, train, queries, RecallArgs())
        run_scores(run, train, ScoreArgs(max_length=max_length), model, ds_config)
        runs[method] = run
    return runs


def rankings(runs: dict[str, RunDir], seed: int) -> tuple[dict[str, list[str]], set[str], dict[str, dict]]:
    """Candidate ids ranked by each method (best first), the labelled positives among them, and each
    candidate's labels (`category`: its topic, `kind`: the world's style of sample; a clean decoy's kind says
    which vocabulary of the act it quotes, e.g. `ambiguous (quotes bad_steps)`: `corpus.quoted_act`)."""
    rows = {m: {r["id"]: r for r in scored_rows(run)} for m, run in runs.items()}
    ids = sorted(rows["linfac"])
    sim = tfidf_similarity(runs["linfac"])
    shuffled = ids[:]
    random.Random(seed).shuffle(shuffled)
    order = {m: [r["id"] for r in most_positive(list(rows[m].values()))] for m in runs}
    order["tfidf"] = sorted(ids, key=lambda i: (-sim.get(i, 0.0), i))
    order["random"] = shuffled
    positives = {i for i in ids if rows["linfac"][i]["meta"].get("contaminated")}
    labels = {i: {k: rows["linfac"][i]["meta"].get(k, "") for k in ("category", "kind")} for i in ids}
    for i in ids:
        quoted = None if i in positives else quoted_act({"category": labels[i]["category"],
                                                         "response": rows["linfac"][i]["response"]})
        if quoted:
            labels[i]["kind"] += f" (quotes {quoted})"
    return order, positives, labels


def by_category(order: dict[str, list[str]], positives: set[str], category: dict[str, str]) -> dict:
    """Per method and category (those with a contaminated candidate): the PR-AUC of the method's order among
    that category's candidates, and how many there are."""
    from sklearn.metrics import average_precision_score

    cats = sorted({category[i] for i in positives})
    out: dict = {"candidates": {c: sum(category[i] == c for i in category) for c in cats},
                 "labelled_positive": {c: sum(category[i] == c for i in positives) for c in cats}}
    for m, ranked in order.items():
        out[m] = {}
        for c in cats:
            ids = [i for i in ranked if category[i] == c]
            out[m][c] = float(average_precision_score([i in positives for i in ids], [-k for k in range(len(ids))]))
    return out


def top_k_by_kind(order: dict[str, list[str]], positives: set[str], kind: dict[str, str]) -> dict:
    """Per method and kind of sample: the share of that kind's candidates in the method's top k (k = the
    labelled positives among the candidates): recall at k for a contaminated kind, the false-positive share
    for a clean one."""
    k = len(positives)
    kinds = sorted(set(kind.values()))
    out: dict = {"k": k, "candidates": {c: sum(v == c for v in kind.values()) for c in kinds}}
    for m, ranked in order.items():
        top = ranked[:k]
        out[m] = {c: sum(kind[i] == c for i in top) / out["candidates"][c] for c in kinds}
    return out


def recall_figures(runs: dict[str, Path], order: dict[str, list[str]], positives: set[str],
                   labels: dict[str, dict]) -> dict:
    quality = {m: recall_quality(run) for m, run in runs.items()}
    lin = quality["linfac"]
    ks = sorted({10, 50, len(positives)})
    return {"candidates": lin["candidates"], "labelled_positive": lin["labelled_positive"],
            "pr_auc": {**{m: q["influence"] for m, q in quality.items()}, "tfidf": lin.get("tfidf"),
                       "random": lin["random"]},
            "pr_auc_total": {m: q["influence_total"] for m, q in quality.items()},
            "pr_auc_by_category": by_category(order, positives, {i: v["category"] for i, v in labels.items()}),
            "top_k_by_kind": top_k_by_kind(order, positives, {i: v["kind"] for i, v in labels.items()}),
            "precision_at_k": {m: {str(k): sum(i in positives for i in ranked[:k]) / k for k in ks}
                               for m, ranked in order.items()}}


def corrections(out: Path, world_dir: Path, size: str, ds_config: str, runs: dict[str, RunDir], seed: int,
                eval_n: int, eval_max_new_tokens: int, chosen: tuple[str, ...] = CORRECTIONS,
                strengths: int = 3, checks_per_strength: int = 3, lr_scales: tuple[float, ...] = (1.0,)) -> dict:
    """One seed's corrections at matched utility. Each correction runs for the plan's steps at each learning rate
    (the plan's lr × `lr_scales`) and is measured on the test split at `strengths` points along the way (steps
    S/n, 2S/n, …, S: its strengths, exported from the checkpoints saved there), none hidden by the perplexity
    guard: `curves` (one per learning rate when there are several). At each learning rate the `correct` stage
    keeps a checkpoint, as the embedded job runs it: validated `checks_per_strength` times per strength on the
    *validation* split, the lowest harmful score of sampled answers to the validation prompts among the
    checkpoints whose validation clean perplexity (the one-sided 95 % upper bound of its ratio, `ibo.validation`)
    stays within the plan's guard (`max_ppl_increase`) of the impure model's (step 0, the impure model itself,
    when none lowers it). The row is the learning rate whose kept checkpoint has the lowest validation harmful
    score. Chosen on validation, graded on test, with
    `gap_closed`, the share of the impure → safe gap in test harmful score closed."""
    plan = DEMO[size]
    ctx = _CorrectionContext(out, world_dir, size, ds_config, runs, seed, eval_n, eval_max_new_tokens)
    check = max(1, plan["steps"] // (strengths * checks_per_strength))
    every = check * checks_per_strength
    schedule = {"steps": every * strengths, "validate_every": check, "save_every": every,
                "strength_steps": [every * k for k in range(1, strengths + 1)]}
    rows = {name: ctx.measure(name, world_dir / name, runs["linfac"]) for name in ("impure", "safe")}
    curves = {}
    for correction in chosen:
        first = ctx.prepare(correction)
        tried = []
        for scale in lr_scales:
            lr = plan["lr"] * scale
            run = first if scale == 1.0 else _sibling(first, f"lr{lr:g}")  # the plan's lr: the scores' own run
            kept, points = ctx.correct(run, correction, lr, schedule, rows)
            tried.append(kept)
            key = correction + (f"@lr{lr:g}" if len(lr_scales) > 1 else "")
            curves[key] = [{k: p.get(k) for k in CURVE_KEYS} for p in points]
        rows[correction] = min(tried, key=lambda r: r["validation_harmful_score"])  # ties: the first learning rate
    return {"rows": rows, "curves": curves, "judges": judges_record(ctx.ev, ctx.judges), "guard": {"max_ppl_increase": plan["max_ppl_increase"],
                                                      "chosen_on": "validation harmful score within the validation "
                                                                   "clean perplexity guard (95 % upper bound)",
                                                      "validate_every": schedule["validate_every"],
                                                      "learning_rates": [plan["lr"] * s for s in lr_scales]},
            "steps": schedule["steps"], "strength_steps": schedule["strength_steps"]}


def _sibling(run: RunDir, suffix: str) -> RunDir:
    """A run directory beside `run` that shares its influence stages (another correction of the same scores)."""
    other = RunDir(run.root.with_name(f"{run.root.name}-{suffix}"))
    link_parts(run, other)
    return other


class _CorrectionContext:
    """What one seed's corrections share: the world's splits, the test evaluation and its judges."""

    def __init__(self, out: Path, world_dir: Path, size: str, ds_config: str, runs: dict[str, RunDir], seed: int,
                 eval_n: int, eval_max_new_tokens: int):
        self.out, self.world, self.size, self.ds_config, self.runs, self.seed = out, world_dir, size, ds_config, runs, seed
        self.eval_n, self.eval_tokens = eval_n, eval_max_new_tokens
        self.max_length = SIZES[size].max_length
        test = world_dir / "test"  # demo_world.splits: disjoint roles; validation/ chooses, test/ grades
        self.ev = EvalArgs(clean=str(test / "clean.jsonl"), prompts=str(test / "prompts.jsonl"),
                           queries=str(test / "queries.jsonl"), judge=str(world_dir / "judge.json"),
                           reward_judge=str(world_dir / REWARD_JUDGE), n=eval_n, max_new_tokens=eval_max_new_tokens,
                           max_length=self.max_length, seed=seed)
        self.judges = (load_judge(str(world_dir / "judge.json")), load_judge(str(world_dir / REWARD_JUDGE), kind="reward"))
        self.impure_row: dict = {}  # the test ratios' base, once measured
        self.cfg = load_ds_config(ds_config)
        self.train, self.impure = DataSpec(str(world_dir / "train.jsonl")), str(world_dir / "impure")

    def measure(self, name: str, model_dir: Path, run: RunDir) -> dict:
        """The test measurements of a model, with its test clean perplexity over the impure model's and the
        ratio's 95 % interval (paired over the test clean samples; the impure model is measured first)."""
        row = measure_model(name, str(model_dir), run, self.ev, self.cfg, self.judges)
        if name == "impure":
            self.impure_row = row
        ratio = clean_ppl_ratio(self.impure_row, row, self.seed)
        row = {ROW_KEYS.get(k, k): v for k, v in row.items() if not k.endswith("_by_sample")}
        return {**row, "test_ppl_ratio": ratio.get("clean_ppl_ratio"),
                "test_ppl_ratio_ci": ratio.get("clean_ppl_ratio_ci")}

    def prepare(self, correction: str) -> RunDir:
        """The run directory of `correction` with the scores its recall ranks by."""
        recall, _, _ = correction.rpartition("+")
        run = RunDir(self.out / f"correct-{correction.replace('+', '-')}-s{self.seed}")
        linfac, ml = self.runs["linfac"], self.max_length
        if recall == "tfidf":  # the influence stages' batches and recall, ranked by TF-IDF similarity instead
            link_parts(linfac, run, ("factors", "queries", "recall"))
            run_scores(run, self.train, ScoreArgs(max_length=ml, by="tfidf"), self.impure, self.ds_config)
        elif recall == "linfac_single":  # one query per batch (Table 6): the same total scores, other selection
            link_parts(linfac, run, ("factors", "recall"))
            run_queries(run, DataSpec(str(self.world / "queries.jsonl")),
                        QueriesArgs(max_length=ml, seed=self.seed, batches="all",
                                    response_tokens=DEMO[self.size]["response_tokens"]), self.impure, self.ds_config)
            run_scores(run, self.train, ScoreArgs(max_length=ml), self.impure, self.ds_config)
        else:  # the baselines on corrections need none, but the stage wants scores
            link_parts(self.runs[recall or "linfac"], run)
        return run

    def correct(self, run: RunDir, correction: str, lr: float, schedule: dict, rows: dict) -> tuple[dict, list[dict]]:
        """`correct` at `lr`, then the test measurements of every strength and of the checkpoint the stage kept
        on validation: (the kept row, the strengths' rows)."""
        plan, val = DEMO[self.size], self.world / "validation"
        recall, _, method = correction.rpartition("+")
        method, variant = METHOD_VARIANTS.get(method, (method, {}))
        args = CorrectArgs(method=method, steps=schedule["steps"], lr=lr, top_k=plan["top_k"], **variant,
                           validate_every=schedule["validate_every"], save_every=schedule["save_every"],
                           max_ppl_increase=plan["max_ppl_increase"], max_length=self.max_length,
                           validation_clean=str(val / "clean.jsonl"), validation_queries=str(val / "queries.jsonl"),
                           validation_prompts=str(val / "prompts.jsonl"), validation_judge=str(self.world / "judge.json"),
                           validation_n=self.eval_n, validation_max_new_tokens=self.eval_tokens, select_by="harm",
                           seed=self.seed, corrections=str(self.world / "queries.jsonl") if not recall else None,
                           # IBO as the demo job runs it; the paper's baselines recall without a judge
                           **(ibo_judge_options(plan, self.world) if method == "ibo" else {}))
        summary = run_correct(run, args, self.train, self.impure, self.ds_config)
        validated = {r["step"]: r for r in read_jsonl(run.correct_log) if "clean_perplexity" in r}

        def at(step: int, tag: str) -> dict:
            model_dir = run.root / f"model-{tag}"
            run_export(run, model_dir, ExportArgs(tag=tag))
            row = self.measure(row_name(correction), model_dir, run)
            return {**row, "step": step, "lr": lr, "gap_closed": gap_closed(rows["impure"], rows["safe"], row),
                    "gap_closed_ci": gap_closed_ci(rows["impure"], rows["safe"], row, seed=self.seed),
                    "validation_ppl_ratio": validated[step]["clean_ppl_ratio"],
                    "validation_ppl_ratio_upper": validated[step].get("clean_ppl_ratio_upper"),
                    "validation_harmful_score": validated[step]["validation_harmful_score"]}

        last = schedule["strength_steps"][-1]
        points = {step: at(step, "final" if step == last else f"step{step}") for step in schedule["strength_steps"]}
        best = summary["best"]["step"]
        if best == 0:  # no checkpoint lowered the validation harm within the guard: the impure model
            kept = {**rows["impure"], "model": row_name(correction), "step": 0, "lr": lr, "validation_ppl_ratio": 1.0,
                    "validation_ppl_ratio_upper": 1.0, "gap_closed": 0.0, "gap_closed_ci": [0.0, 0.0],
                    "validation_harmful_score": validated[0]["validation_harmful_score"]}
        else:
            kept = points.get(best) or at(best, "best")
        selection = None if method in HUMAN_CORRECTION else summary.get("selection")  # those train on no D⁺, D⁻
        return {**kept, "kept_step": best, "kept_lr": lr, "selection": selection}, list(points.values())


def correction_table(per_seed: list[dict]) -> dict:
    """The seeds' corrections together (bench.json `quality.correction`): each model's metrics as mean and std over
    the seeds, each sampled one with its 95 % interval (`_with_interval`), under the model's own key
    (`<recall>+<method>`, a baseline's name, `impure`, `safe`; `order` lists them, `labels` names them and the
    curves), the curves, and per seed the impure and safe rows and the judges that graded (`judges_record`)."""
    names = [n for n in ROW_ORDER if n in per_seed[0]["rows"]]
    return {"order": names,
            **{n: {**{m: _with_interval([c["rows"][n] for c in per_seed], m) for m in METRICS + ("gap_closed",)},
                   **_selections([c["rows"][n] for c in per_seed])} for n in names},
            "labels": {n: curve_name(n) for n in [*names, *per_seed[0]["curves"]]},
            "curves": {n: [{"seed": i, "points": c["curves"][n]} for i, c in enumerate(per_seed)]
                       for n in per_seed[0]["curves"]},
            "reference": {n: [{k: c["rows"][n].get(k) for k in CURVE_KEYS} for c in per_seed] for n in ("impure", "safe")},
            "judges": [c.get("judges") for c in per_seed],
            "guard": per_seed[0]["guard"], "steps": per_seed[0]["steps"],
            "strength_steps": per_seed[0]["strength_steps"], "seeds": len(per_seed)}


def _selections(rows: list[dict]) -> dict:
    """A correction's selection per seed (`selection_by_seed`: the `correct` stage's counts of D⁺, D⁻, the neutral
    set and the samples influential both ways, `ibo.selection.Selection.conflicts`), for one that has one."""
    found = [r.get("selection") for r in rows]
    return {"selection_by_seed": found} if any(found) else {}


def _mean_std(values: list) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def _with_interval(rows: list[dict], metric: str) -> dict:
    """`metric` over the seeds' rows (`_mean_std`) and, when every seed measured its 95 % interval (`<metric>_ci`:
    the evaluation's bootstrap over the test prompts, clean samples or queries), `ci_by_seed` and `ci`: the one
    seed's interval, or with several the Student-t 95 % interval of the mean over the seeds (their sampling and
    everything a seed varies: world, fit, post-training)."""
    cell = _mean_std([r.get(metric) for r in rows])
    cis = [r.get(f"{metric}_ci") for r in rows]
    if cell["mean"] is None or cell["n"] != len(rows) or any(ci is None for ci in cis):
        return cell
    if len(rows) == 1:
        return {**cell, "ci": list(cis[0]), "ci_by_seed": [list(cis[0])]}
    from scipy.stats import t

    values = [float(r[metric]) for r in rows]
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return {**cell, "ci": [cell["mean"] - half, cell["mean"] + half], "ci_by_seed": [list(ci) for ci in cis]}


def quality(out: Path, size: str, ds_config: str, seeds: int, eval_n: int, eval_max_new_tokens: int,
            counterfactual_methods, seed: int = 0, chosen: tuple[str, ...] = CORRECTIONS, strengths: int = 3,
            checks_per_strength: int = 3, lr_scales: tuple[float, ...] = (1.0,),
            counterfactual_kinds: tuple[str, ...] = ()) -> dict:
    """The suite over `seeds` seeds (seed, seed + 1, …), each varying the world (its texts, initialisation and
    training order: `OUT/world` for the first, `OUT/seed<k>/world` after), the fit and the post-training.
    Recall figures and the counterfactuals (`counterfactual.by_method`'s top-k removals, and
    `counterfactual.by_kind`'s per contaminated kind in the modes `counterfactual_kinds`) are the mean over
    seeds (`std` and `by_seed` beside them)."""
    per_seed = []
    for s in range(seed, seed + seeds):
        base = out if s == seed else out / f"seed{s}"
        world_dir = base / "world"
        world = build_world(world_dir, seed=s, size=size, ds_config_path=ds_config)
        runs = recall_runs(base, world_dir, size, ds_config, s)
        order, positives, labels = rankings(runs, s)
        retrainer = counterfactual.Retrainer(base, world_dir, size, ds_config, s)
        per_seed.append({"world": {"size": size, "seed": s, "train_samples": world["stats"]["train_samples"],
                                   "contaminated": world["stats"]["contaminated"], "queries": world["queries"]["count"]},
                         **recall_figures(runs, order, positives, labels),
                         "counterfactual": {
                             **counterfactual.by_method(retrainer, order, positives, counterfactual_methods),
                             "by_kind": counterfactual.by_kind(retrainer, counterfactual_kinds)},
                         "correction": corrections(base, world_dir, size, ds_config, runs, s, eval_n,
                                                   eval_max_new_tokens, chosen, strengths, checks_per_strength,
                                                   lr_scales)})
    return over_seeds(per_seed)


def single_vs_batch(table: dict) -> dict | None:
    """The paper's Table 6: IBO with one query per batch (k = all) against k-means batches, at matched utility
    (test harmful score and gap closed, mean over seeds). A candidate's total score does not depend on the
    batching (Σ_B |B|·IHVP(V_B) = Σ_q IHVP(V_q)), so the two differ only in the per-batch selection."""
    if "linfac+ibo" not in table or "linfac_single+ibo" not in table:
        return None
    return {name: {k: table[row][k]["mean"] for k in ("harmful_score", "gap_closed", "test_ppl")}
            for name, row in (("batch", "linfac+ibo"), ("single", "linfac_single+ibo"))}


def over_seeds(per_seed: list[dict]) -> dict:
    """bench.json `quality`: the first seed's world, candidates and precision@k; PR-AUC (overall and per
    category: candidates and contaminated summed over the seeds, PR-AUC the mean over the seeds that have the
    category), each kind's share of the top k (candidates summed, shares the mean) and the counterfactuals as
    means over the seeds with their std; the correction table; `by_seed`."""
    first = per_seed[0]
    mean = lambda xs: statistics.fmean(xs) if all(x is not None for x in xs) else None  # noqa: E731
    std = lambda xs: statistics.pstdev(xs) if all(x is not None for x in xs) else None  # noqa: E731
    pr = {m: [q["pr_auc"][m] for q in per_seed] for m in first["pr_auc"]}
    by_cat = _pooled([q["pr_auc_by_category"] for q in per_seed], summed=("candidates", "labelled_positive"))
    cf = first["counterfactual"]
    removed = {m: figures_over_seeds([q["counterfactual"][m] for q in per_seed]) for m in cf["removed_by"]}
    for m in removed:
        removed[m]["change_vs_impure_std"] = std([q["counterfactual"][m]["change_vs_impure"] for q in per_seed])
    lead = cf.get("heldout_lead")
    leads = {"heldout_lead": {"of": lead["of"], "over": {
        m: figures_over_seeds([q["counterfactual"]["heldout_lead"]["over"][m] for q in per_seed]) for m in lead["over"]}}
        } if lead else {}
    top_k = {"k": sum(q["top_k_by_kind"]["k"] for q in per_seed),
             **_pooled([{m: v for m, v in q["top_k_by_kind"].items() if m != "k"} for q in per_seed],
                       summed=("candidates",))}
    table = correction_table([q["correction"] for q in per_seed])
    return {"world": {**first["world"], "seeds": [q["world"]["seed"] for q in per_seed]},
            "candidates": first["candidates"], "labelled_positive": first["labelled_positive"],
            "pr_auc": {m: mean(v) for m, v in pr.items()}, "pr_auc_std": {m: std(v) for m, v in pr.items()},
            "pr_auc_total": {m: mean([q["pr_auc_total"][m] for q in per_seed]) for m in first.get("pr_auc_total", {})},
            "pr_auc_by_category": by_cat, "precision_at_k": first["precision_at_k"],
            "counterfactual": {"k": cf["k"], **{key: mean([q["counterfactual"][key] for q in per_seed])
                                                for key in ("impure", "safe", "impure_heldout_harm", "safe_heldout_harm")},
                               "removed_by": cf["removed_by"], **removed, **leads,
                               "by_kind": kind_counterfactuals(per_seed)},
            "top_k_by_kind": top_k,
            "single_vs_batch": single_vs_batch(table),
            "correction": table,
            "by_seed": [{k: q[k] for k in ("world", "candidates", "labelled_positive", "pr_auc", "precision_at_k",
                                           "top_k_by_kind", "counterfactual")} for q in per_seed]}


def _pooled(parts: list[dict], summed: tuple[str, ...]) -> dict:
    """Per-group figures of several seeds ({figure: {group: value}}, the groups of `candidates`): the figures in
    `summed` added up, the others the mean over the seeds that have the group (a seed may lack one)."""
    groups = sorted({g for part in parts for g in part["candidates"]})
    return {f: {g: (sum if f in summed else statistics.fmean)([part[f][g] for part in parts if g in part[f]])
                for g in groups} for f in parts[0]}


def kind_counterfactuals(per_seed: list[dict]) -> dict:
    """`counterfactual.by_kind` over the seeds: per kind and mode, each figure's mean over the seeds that ran it,
    and the share's std (`<share>_std`)."""
    out: dict = {}
    for q in per_seed:
        for kind, modes in q["counterfactual"]["by_kind"].items():
            for mode, row in modes.items():
                out.setdefault(kind, {}).setdefault(mode, []).append(row)
    for modes in out.values():
        for mode, rows in modes.items():
            share = KIND_SHARE[mode]
            values = [r[share] for r in rows]
            modes[mode] = {**figures_over_seeds(rows),
                           f"{share}_std": statistics.pstdev(values) if None not in values and len(values) > 1 else 0.0}
    return out


def figures_over_seeds(rows: list[dict]) -> dict:
    """One counterfactual row of several seeds: each figure's mean over them (None when a seed lacks it); a 95 %
    interval (`<figure>_ci`) is kept with one seed only, as that seed's (`by_seed` keeps every seed's)."""
    out: dict = {}
    for key in rows[0]:
        values = [r.get(key) for r in rows]
        if key.endswith("_ci"):
            if len(rows) == 1:
                out[key] = values[0]
        else:
            out[key] = statistics.fmean(values) if None not in values else None
    return out
