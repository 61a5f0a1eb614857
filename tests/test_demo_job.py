"""The embedded default job on a tiny world under 2 ranks (`deepspeed launch/correct.py`), asserting the
report's content and its protocol, that the correction shows on data that took no part in choosing the
checkpoint, and an idempotent rerun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.multirank


def job(run_dir, *extra, nproc=2):
    cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), "launch/correct.py",
           "--config", "ds_configs/zero3.json", "--run-dir", str(run_dir), "--size", "tiny", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_world):
    run = tmp_path_factory.mktemp("demo") / "run"
    run.mkdir()  # the session's tiny world (seed 0, built on 2 ranks by the CLI) is the job's: its world stage reuses it
    shutil.copytree(tiny_world, run / "world", symlinks=True)
    first = job(run)
    return run, first, json.loads((run / "report.json").read_text())


def test_default_job_on_a_tiny_world(demo):
    run, first, report = demo
    assert set(report["stage_seconds"]) == {"world", "fit", "queries", "recall", "score", "correct", "export", "evaluate",
                                            "ekfac"}
    pr = report["recall_pr_auc"]
    # the tiny world's hard design (format 3: decoys quote the whole act): LinFAC 0.31, EK-FAC 0.32, TF-IDF 0.24
    # against a base rate of 0.15 on this job (format 2 gave LinFAC 0.42, EK-FAC 0.48, TF-IDF 0.39); how LinFAC
    # compares with TF-IDF is measured on the default world by the quality bench, not asserted on the tiny one
    assert pr["linfac"] > pr["random"] + 0.1 and pr["ekfac"] > pr["random"] + 0.1 and 0 < pr["tfidf"] < 1
    rows = {r["model"]: r for r in report["evaluation"]}
    assert set(rows) == {"impure", "corrected", "safe"}
    assert rows["corrected"]["query_logprob_per_token"] < rows["impure"]["query_logprob_per_token"]
    assert rows["safe"]["query_logprob_per_token"] < rows["corrected"]["query_logprob_per_token"]
    assert 0 <= rows["corrected"]["harmful_rate"] <= 1 and rows["corrected"]["generations"] > 0
    assert all(len(rows[m][f"{k}_ci"]) == 2 for m in rows
               for k in ("harmful_rate", "harmful_score", "helpful_score", "c_r", "helpful_score_allowed",
                         "seen_harmful_score", "seen_c_r"))
    assert report["protocol"]["judges"]["evaluation_reward"]["path"].endswith("reward_judge.json")
    assert report["selection"]["positive"] > 0 and report["export"]["reload_max_abs_logit_diff"] < 1e-5
    comp = report["selection"]["composition"]
    assert comp["positive"]["labelled_positive"] > 0 and "labelled_positive_unplaced" in comp
    assert sorted(report["plots"]) == ["plots/pr_curve.png", "plots/query_logprob.png", "plots/score_distribution.png",
                                       "plots/validation.png"]
    cats = {json.loads(x)["category"] for x in (run / "world" / "test" / "prompts.jsonl").read_text().splitlines()}
    assert set(rows["corrected"]["harm_by_category"]) == cats and set(report["query_categories"]) <= cats
    md = (run / "report.md").read_text()
    assert "### Harm by category" in md and "| category | prompts | influence queries | impure | corrected |" in md
    assert "EK-FAC (AP" not in md and "| ekfac |" in md and "**Protocol.** The checkpoint was chosen by harm on" in md
    assert "query log-prob" in first.stdout and "recall PR-AUC" in first.stdout


def test_the_protocol_keeps_choosing_and_grading_apart(demo):
    run, _, report = demo
    protocol = report["protocol"]
    chosen = {v["path"] for v in protocol["validation"].values()}
    graded = {v["path"] for v in protocol["evaluation"].values()}
    assert chosen and graded and not chosen & graded and protocol["influence_queries"]["path"] not in chosen | graded
    assert protocol["checkpoint_chosen_by"].startswith("harm on ") and "validation" in protocol["checkpoint_chosen_by"]
    assert "within a 25 % perplexity bound" in protocol["checkpoint_chosen_by"]  # the tiny plan's guard
    assert "(its 95 % upper bound)" in protocol["checkpoint_chosen_by"]
    log = [json.loads(x) for x in (run / "correct" / "log.jsonl").read_text().splitlines()]
    validations = [r for r in log if "value" in r]
    assert validations[0]["step"] == 0 and all(r["criterion"] == "harm" for r in validations)


def test_the_report_names_the_judges_that_graded(demo):
    """eval.json, report.json and report.md say which judges graded, by content sha256 and what the judge says
    of itself (the reward judge's data version): grades of two judge versions must not be read as comparable."""
    import hashlib

    from lancet_ds.demo_world.corpus import REWARD_DATA_VERSION

    run, _, report = demo
    judges = json.loads((run / "evaluate" / "eval.json").read_text())["judges"]
    assert report["judges"] == judges and set(judges) == {"harm", "reward"}
    for role, name in (("harm", "judge.json"), ("reward", "reward_judge.json")):
        stored = json.loads((run / "world" / name).read_text())
        assert judges[role]["metrics"] == stored["metrics"] and judges[role]["threshold"] == stored["threshold"]
        assert judges[role]["sha256"] == hashlib.sha256(name.encode() + (run / "world" / name).read_bytes()).hexdigest()
    assert judges["reward"]["metrics"]["data_version"] == REWARD_DATA_VERSION
    md = (run / "report.md").read_text()
    assert f"reward data version {REWARD_DATA_VERSION}" in md and judges["harm"]["sha256"][:12] in md


def test_the_correction_shows_on_data_that_did_not_choose_it(demo):
    """On the test split (unseen prompts, not used to choose the checkpoint) the corrected model's harmful
    score falls, with its paired 95 % interval reported, and the test perplexity stays within the guard.

    Significance is not asserted on the 2-layer tiny world: the same commit gave an interval that excluded 0 on
    one machine and −0.039 [−0.082, +0.004] on another (its float32 kernels build a different world). Whether
    the correction shows beyond sampling noise is measured on the default world over seeds by the quality
    bench (README, Bench)."""
    _, _, report = demo
    rows = {r["model"]: r for r in report["evaluation"]}
    versus = report["versus_impure"]["corrected"]
    print(json.dumps({m: {k: rows[m].get(k) for k in ("harmful_score", "harmful_score_ci", "harmful_rate",
                                                       "harmful_rate_ci", "clean_perplexity")} for m in rows}))
    print(json.dumps(versus))
    assert versus["harmful_score_minus_impure"] < 0 and versus["ci"][0] < 0, versus
    assert rows["corrected"]["clean_perplexity"] <= 1.25 * rows["impure"]["clean_perplexity"]  # the tiny plan's guard
    # the same, paired over the test clean samples, with its interval
    ratio = rows["corrected"]["clean_perplexity"] / rows["impure"]["clean_perplexity"]
    assert versus["clean_ppl_ratio"] == pytest.approx(ratio, rel=1e-9)
    assert versus["clean_ppl_ratio_ci"][0] < versus["clean_ppl_ratio"] < versus["clean_ppl_ratio_ci"][1]


def test_a_finished_demo_job_on_a_world_of_an_earlier_format_is_refused_before_any_stage(demo, tmp_path):
    """The job skips a finished world stage without building the world, so it checks the format first: a copy of the
    finished run whose world is of another format (here world.json says 4) is refused on both ranks with how to
    rebuild it; the manifest records the job failed and every stage's record as it was (the old world, its models,
    queries and grades, were reused before)."""
    run, _, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    world = json.loads((copy / "world" / "world.json").read_text())
    (copy / "world" / "world.json").write_text(json.dumps({**world, "format": 4}))
    stages = json.loads((copy / "manifest.json").read_text())["stages"]
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "launch/correct.py",
           "--config", "ds_configs/zero3.json", "--run-dir", str(copy), "--size", "tiny"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]
    assert f"{copy / 'world'}: holds a demo world of format 4" in out and "--from-stage world" in out
    after = json.loads((copy / "manifest.json").read_text())
    assert "stage 1/" not in out and after["stages"] == stages and after["status"] == "failed"


def test_a_finished_demo_job_retrains_an_outdated_reward_judge_then_reruns_without_work(demo):
    """A world whose reward judge predates the current reward data (here: reversed coefficients, no version)
    gets it retrained before the stages run (`ready_finished_world`); the same seed retrains the same judge, so
    every stage's inputs, the evaluate stage's judge among them, are the finished run's: a plain rerun skips all
    ten and the grades stay the first run's. (Without the retraining the evaluate stage would see a changed
    input and the job's plan would refuse the plain rerun.)"""
    run, _, report = demo
    path = run / "world" / "reward_judge.json"
    current = json.loads(path.read_text())
    old = {**current, "coef": [-c for c in current["coef"]],
           "metrics": {k: v for k, v in current["metrics"].items() if k != "data_version"}}
    path.write_text(json.dumps(old))
    again = job(run)
    assert "retraining the reward judge" in again.stdout + again.stderr
    assert json.loads(path.read_text()) == current
    assert again.stdout.count("unchanged since its finished run; skipping") == 10
    assert json.loads((run / "report.json").read_text())["evaluation"] == report["evaluation"]
