"""The quality suite on the demo world (DESIGN.md section 6; the paper's Figure 4 a–c and Tables 3 and 7).

1. Recall: LinFAC and EK-FAC runs of the stages (fit → queries → recall → score) on the impure model;
   PR-AUC (`report.recall_quality`) and precision@k of LinFAC, EK-FAC, TF-IDF similarity alone and a
   random order at ranking the contaminated samples among the recalled candidates.
2. Counterfactual: the top-k candidates by each method (k = the labelled positives among them) are
   removed from the corpus and the impure model is retrained from the world's `init/` with the world's
   own training loop and seed (`demo_world.build.train_world_model`); the change in the query responses'
   per-token log-prob says how much of the behaviour each removal took away.
3. Corrections: LinFAC+IBO, EK-FAC+IBO, LinFAC+PBO, EK-FAC+PBO (= PBU), LinFAC+GA, LinFAC+LLM-UL, the human-correction
   baselines SFT-ER and DPO-ER (on the queries' corrected responses), each `correct` → `export` → the
   evaluation's measurements on the test split (the checkpoint chosen on the validation split), beside the
   impure and safe models, per seed, with the share of the impure → safe harmful-score gap closed.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.corpus import load_encoded
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.data.spec import DataSpec
from lancet_ds.demo_world.build import REWARD_JUDGE, SIZES, build_world, heldout_pairs, train_world_model
from lancet_ds.evaluation.evaluate import EvalArgs, measure_model
from lancet_ds.evaluation.judge import load_judge
from lancet_ds.export import ExportArgs, run_export
from lancet_ds.fileio import read_json, read_jsonl
from lancet_ds.ibo.correct import CorrectArgs, run_correct
from lancet_ds.influence.fit import FitArgs, fit_factors
from lancet_ds.influence.queries import QueriesArgs, run_queries
from lancet_ds.influence.score import ScoreArgs, run_scores
from lancet_ds.modeling import load_ds_config, load_tokenizer
from lancet_ds.recall.stage import RecallArgs, run_recall
from lancet_ds.run_dir import RunDir
from lancet_ds.bench.sizes import CORRECTIONS
from lancet_ds.job.demo import DEMO
from lancet_ds.report import recall_quality

# per world size, as the embedded job runs it (lancet_ds.job.demo.DEMO), except that the bench's seeds ×
# corrections post-train the default world for 100 steps instead of the job's 300
PLAN = {**DEMO, "default": {**DEMO["default"], "steps": 100}}
METRICS = ("query_logprob_per_token", "harmful_rate", "harmful_score", "helpful_score", "helpful_score_allowed", "c_r",
           "clean_perplexity", "msttr", "self_bleu", "entropy", "kept_step")
NAMES = {"linfac": "LinFAC", "ekfac": "EK-FAC", "ibo": "IBO", "pbo": "PBO", "ga": "GA", "llm_ul": "LLM-UL",
         "sft_er": "SFT-ER", "dpo_er": "DPO-ER"}
ROW_ORDER = ("impure", "safe", "LinFAC+IBO", "EK-FAC+IBO", "LinFAC+PBO", "EK-FAC+PBO", "LinFAC+GA", "LinFAC+LLM-UL",
             "SFT-ER", "DPO-ER")


def row_name(correction: str) -> str:
    return "+".join(NAMES[part] for part in correction.split("+"))


def recall_runs(out: Path, world_dir: Path, size: str, ds_config: str, seed: int) -> dict[str, RunDir]:
    """The stages up to `score` for LinFAC and EK-FAC (each reused when finished)."""
    plan, max_length = PLAN[size], SIZES[size].max_length
    train, queries, model = DataSpec(str(world_dir / "train.jsonl")), DataSpec(str(world_dir / "queries.jsonl")), \
        str(world_dir / "impure")
    runs = {}
    for method in ("linfac", "ekfac"):
        run = RunDir(out / method)
        fit_factors(run, train, FitArgs(method=method, num_samples=plan["num_samples"],
                                        max_new_tokens=plan["max_new_tokens"], max_length=max_length, seed=seed),
                    model, ds_config)
        run_queries(run, queries, QueriesArgs(max_length=max_length, seed=seed), model, ds_config)
        run_recall(run, train, queries, RecallArgs())
        run_scores(run, train, ScoreArgs(max_length=max_length), model, ds_config)
        runs[method] = run
    return runs


def rankings(runs: dict[str, RunDir], seed: int) -> tuple[dict[str, list[str]], set[str]]:
    """Candidate ids ranked by each method (best first), and the labelled positives among them."""
    rows = {m: {r["id"]: r for r in read_jsonl(run.score_rows)} for m, run in runs.items()}
    ids = sorted(rows["linfac"])
    sim: dict[str, float] = {}
    for q in read_jsonl(runs["linfac"].recall_rows):
        for i, s in zip(q["ids"], q["similarities"]):
            sim[i] = max(sim.get(i, 0.0), s)
    shuffled = ids[:]
    random.Random(seed).shuffle(shuffled)
    order = {m: sorted(ids, key=lambda i: (-rows[m][i]["score"], i)) for m in runs}
    order["tfidf"] = sorted(ids, key=lambda i: (-sim.get(i, 0.0), i))
    order["random"] = shuffled
    positives = {i for i in ids if rows["linfac"][i]["meta"].get("contaminated")}
    return order, positives


def recall_figures(runs: dict[str, Path], order: dict[str, list[str]], positives: set[str]) -> dict:
    lin, ek = recall_quality(runs["linfac"]), recall_quality(runs["ekfac"])
    ks = sorted({10, 50, len(positives)})
    return {"candidates": lin["candidates"], "labelled_positive": lin["labelled_positive"],
            "pr_auc": {"linfac": lin["influence"], "ekfac": ek["influence"], "tfidf": lin.get("tfidf"),
                       "random": lin["random"]},
            "precision_at_k": {m: {str(k): sum(i in positives for i in ranked[:k]) / k for k in ks}
                               for m, ranked in order.items()}}


def _query_logprob(metrics: dict, heldout_rows: list[dict], query_ids: set[str]) -> float:
    vals = [v for r, v in zip(heldout_rows, metrics["compliant_logprob_per_token"])
            if r["id"].replace("heldout", "query") in query_ids]
    return sum(vals) / len(vals)


def counterfactual(out: Path, world_dir: Path, size: str, ds_config: str, seed: int, order, positives,
                   methods) -> dict:
    """Retrain without each method's top-k; the query log-prob against the impure and safe models'."""
    cfg = SIZES[size]
    tok = load_tokenizer(world_dir / "tokenizer")
    samples, train_set = load_encoded(world_dir / "train.jsonl", SchemaSpec(), tok, cfg.max_length, RejectSink("fail"))
    heldout = heldout_pairs(world_dir, tok, cfg.max_length)
    query_ids = {r["id"] for r in read_jsonl(world_dir / "queries.jsonl")}
    ds = load_ds_config(ds_config, train_micro_batch_size_per_gpu=cfg.global_batch // dist_utils.world_size(),
                        gradient_accumulation_steps=1)
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"]["lr"] = cfg.lr
    base = out / "counterfactual"
    base.mkdir(parents=True, exist_ok=True)
    if not (base / "init").exists() and dist_utils.is_main():
        (base / "init").symlink_to((world_dir / "init").resolve())
    dist_utils.barrier()
    k = len(positives)
    result = {"k": k, "impure": _query_logprob(read_json(world_dir / "impure.metrics.json"), heldout[0], query_ids),
              "safe": _query_logprob(read_json(world_dir / "safe.metrics.json"), heldout[0], query_ids), "removed": {}}
    for m in methods:
        drop = set(order[m][:k])
        kept = [e for e in train_set if e.id not in drop]
        say(f"counterfactual: retraining without the top {k} by {m}")
        metrics = train_world_model(f"without_{m}", base, kept, ds, cfg, seed, tok, heldout)
        lp = _query_logprob(metrics, heldout[0], query_ids)
        result["removed"][m] = {"query_logprob_per_token": lp, "change_vs_impure": lp - result["impure"],
                                "contaminated_removed": len(drop & positives)}
    return result


def _link_recall(src: RunDir, dst: RunDir) -> None:
    dst.root.mkdir(parents=True, exist_ok=True)
    if dist_utils.is_main():
        for part in ("factors", "queries", "recall", "scores"):
            if not getattr(dst, part).exists():
                getattr(dst, part).symlink_to(getattr(src, part).resolve())
    dist_utils.barrier()


def corrections(out: Path, world_dir: Path, size: str, ds_config: str, runs: dict[str, Path], seeds: int,
                eval_n: int, eval_max_new_tokens: int, chosen: tuple[str, ...] = CORRECTIONS) -> dict:
    """The correction table: per model, each metric's mean and std over the seeds, and `gap_closed`, the
    share of the impure → safe gap in test harmful score each correction closed (per seed, then averaged)."""
    plan, max_length = PLAN[size], SIZES[size].max_length
    val, test = world_dir / "validation", world_dir / "test"  # demo_world.splits: disjoint roles
    ev = lambda s: EvalArgs(clean=str(test / "clean.jsonl"), prompts=str(test / "prompts.jsonl"),  # noqa: E731
                            queries=str(test / "queries.jsonl"), judge=str(world_dir / "judge.json"),
                            reward_judge=str(world_dir / REWARD_JUDGE), n=eval_n,
                            max_new_tokens=eval_max_new_tokens, max_length=max_length, seed=s)
    judge = (load_judge(str(world_dir / "judge.json")), load_judge(str(world_dir / REWARD_JUDGE), kind="reward"))
    cfg = load_ds_config(ds_config)
    rows: dict[str, list[dict]] = {}
    for seed in range(seeds):
        for name, path in (("impure", world_dir / "impure"), ("safe", world_dir / "safe")):
            rows.setdefault(name, []).append(measure_model(name, str(path), runs["linfac"], ev(seed), cfg, judge))
        for correction in chosen:
            recall, _, post = correction.rpartition("+")
            run = RunDir(out / f"correct-{correction.replace('+', '-')}-s{seed}")
            _link_recall(runs[recall or "linfac"], run)  # the baselines on corrections need none, but the stage wants scores
            args = CorrectArgs(method=post, steps=plan["steps"], lr=plan["lr"], validate_every=max(1, plan["steps"] // 10),
                               max_ppl_increase=plan["max_ppl_increase"], save_every=plan["steps"],
                               max_length=max_length, validation_clean=str(val / "clean.jsonl"),
                               validation_queries=str(val / "queries.jsonl"), seed=seed,
                               corrections=str(world_dir / "queries.jsonl") if not recall else None)
            done = run_correct(run, args, DataSpec(str(world_dir / "train.jsonl")), str(world_dir / "impure"), ds_config)
            run_export(run, run.model, ExportArgs())
            row = measure_model(row_name(correction), str(run.model), run, ev(seed), cfg, judge)
            row["kept_step"] = (done.get("best") or {}).get("step", done["steps"])  # the exported checkpoint's step
            row["gap_closed"] = gap_closed(rows["impure"][-1], rows["safe"][-1], row)
            rows.setdefault(row["model"], []).append(row)
    return {"order": [n for n in ROW_ORDER if n in rows],
            "rows": {name: {m: _mean_std([r.get(m) for r in rs]) for m in METRICS + ("gap_closed",)}
                     for name, rs in rows.items()},
            "steps": plan["steps"], "seeds": seeds}


def gap_closed(impure: dict, safe: dict, corrected: dict, key: str = "harmful_score") -> float | None:
    """(impure − corrected) / (impure − safe) on `key`: 1 = as good as the safe model, 0 = no change."""
    if any(row.get(key) is None for row in (impure, safe, corrected)) or abs(impure[key] - safe[key]) < 1e-12:
        return None
    return (impure[key] - corrected[key]) / (impure[key] - safe[key])


def _mean_std(values: list) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def quality(out: Path, size: str, ds_config: str, seeds: int, eval_n: int, eval_max_new_tokens: int,
            counterfactual_methods, seed: int = 0, chosen: tuple[str, ...] = CORRECTIONS) -> dict:
    world_dir = out / "world"
    world = build_world(world_dir, seed=seed, size=size, ds_config_path=ds_config)
    runs = recall_runs(out, world_dir, size, ds_config, seed)
    order, positives = rankings(runs, seed)
    return {"world": {"size": size, "seed": seed, "train_samples": world["stats"]["train_samples"],
                      "contaminated": world["stats"]["contaminated"], "queries": world["queries"]["count"]},
            **recall_figures(runs, order, positives),
            "counterfactual": counterfactual(out, world_dir, size, ds_config, seed, order, positives,
                                             counterfactual_methods),
            "correction": corrections(out, world_dir, size, ds_config, runs, seeds, eval_n, eval_max_new_tokens, chosen)}
