"""The embedded default job: the demo world, then fit → queries → recall → score → correct → export →
evaluate, in one process under the DeepSpeed launcher, each stage reusing its finished result (so a
rerun after an interruption continues where it stopped), then `report.json` and a summary table.

Settings are sized for the demo world's small models (larger post-training lr, fewer steps and
fitting sequences than the paper's defaults).
"""

from __future__ import annotations

import time
from pathlib import Path

from lancet_ds import distributed as dist_utils
from lancet_ds.console import console, say
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.demo_world.build import SIZES, build_world
from lancet_ds.evaluation.evaluate import EvalArgs, eval_table, run_evaluate
from lancet_ds.export import run_export
from lancet_ds.fileio import write_json
from lancet_ds.ibo.correct import CorrectArgs, run_correct
from lancet_ds.influence.fit import FitArgs, fit_factors
from lancet_ds.influence.queries import run_queries
from lancet_ds.influence.score import run_scores
from lancet_ds.recall.stage import run_recall
from lancet_ds.report import build_report

DEMO = {  # per world size: fitting sequences, generated tokens, post-training steps and lr, perplexity guard
    # (the tiny world's 2-layer model memorises its templates; any update costs it >10 % clean perplexity)
    "tiny": {"num_samples": 200, "max_new_tokens": 32, "steps": 60, "lr": 5e-4, "max_ppl_increase": 0.25},
    "default": {"num_samples": 500, "max_new_tokens": 64, "steps": 300, "lr": 5e-4, "max_ppl_increase": 0.05},
    "large": {"num_samples": 1000, "max_new_tokens": 64, "steps": 600, "lr": 3e-4, "max_ppl_increase": 0.05},
}


def run_demo_job(run_dir: str, ds_config: str, seed: int = 0, size: str = "default") -> dict:
    run, world_dir = Path(run_dir), Path(run_dir) / "world"
    plan = DEMO[size]
    max_length = SIZES[size].max_length
    spec = SchemaSpec()
    train = str(world_dir / "train.jsonl")
    timings: dict[str, float] = {}

    def stage(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    stage("world", build_world, world_dir, seed=seed, size=size, ds_config_path=ds_config)
    stage("fit", fit_factors, str(world_dir / "impure"), train, run_dir,
          FitArgs(num_samples=plan["num_samples"], max_new_tokens=plan["max_new_tokens"], max_length=max_length,
                  seed=seed), spec, ds_config)
    stage("queries", run_queries, run_dir, str(world_dir / "queries.jsonl"), spec, ds_config, max_length=max_length,
          seed=seed)
    stage("recall", run_recall, run_dir, train, spec)
    stage("score", run_scores, run_dir, train, spec, ds_config, max_length=max_length)
    stage("correct", run_correct, run_dir, CorrectArgs(steps=plan["steps"], lr=plan["lr"], validate_every=max(1, plan["steps"] // 10),
                                                       max_ppl_increase=plan["max_ppl_increase"],
                                                       save_every=max(1, plan["steps"] // 3), max_length=max_length,
                                                       validate_clean=str(world_dir / "clean_heldout.jsonl"),
                                                       seed=seed), ds_config)
    stage("export", run_export, run_dir, str(run / "model"))
    rows = stage("evaluate", run_evaluate, run_dir,
                 EvalArgs(clean=str(world_dir / "clean_heldout.jsonl"), prompts=str(world_dir / "eval_prompts.jsonl"),
                          judge=str(world_dir / "judge.json"), max_length=max_length, seed=seed),
                 ds_config, [("safe", str(world_dir / "safe"))])
    report = build_report(run, timings)
    if dist_utils.is_main():
        write_json(run / "report.json", report)
        console().print(eval_table(rows))
        pr = report["recall_pr_auc"]
        if pr:
            say(f"recall PR-AUC among {pr['candidates']} candidates: influence {pr['influence']:.3f}, "
                f"TF-IDF {pr.get('tfidf', float('nan')):.3f}, random {pr['random']:.3f}")
        say(f"run directory: {run.resolve()} (report.json, model/)")
    dist_utils.barrier()
    return report
