"""queries → recall → score on the tiny demo world under 2 ZeRO-3 ranks (real launcher): contaminated
samples rank above safe ones, 1 rank gives the same recall and scores, a killed scoring run resumes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from sklearn.metrics import average_precision_score

from conftest import cli, launch

pytestmark = pytest.mark.multirank


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def stages(world: Path, run: Path, nproc: int, method: str = "linfac", only=("fit", "queries", "recall", "score"),
           env=None, check=True):
    data = str(world / "train.jsonl")
    cmds = {
        "fit": ["fit", "--model", str(world / "impure"), "--data", data, "--out", str(run), "--method", method,
                "--fit-responses", "corpus", "--num-samples", "300", "--max-length", "96"],
        "queries": ["queries", "--run", str(run), "--queries", str(world / "queries.jsonl"), "--batches", "3",
                    "--max-length", "96"],
        "recall": ["recall", "--run", str(run), "--data", data, "--top-k", "60", "--chunk-size", "100"],
        "score": ["score", "--run", str(run), "--data", data, "--max-length", "96", "--micro-batch", "8"],
    }
    return [launch(cmds[name], nproc=nproc, env=env, check=check) for name in only]


def pr_auc(scored: list[dict], key) -> float:
    return average_precision_score([r["meta"]["contaminated"] for r in scored], [key(r) for r in scored])


def tfidf_similarity(run: Path) -> dict[str, float]:
    best: dict[str, float] = {}
    for q in rows(run / "recall" / "recall.jsonl"):
        for i, s in zip(q["ids"], q["similarities"]):
            best[i] = max(best.get(i, 0.0), s)
    return best


def assert_same_scores(got: list[dict], ref: list[dict]) -> None:
    """Scores agree across rank counts to float32 accumulation: `score --dtype float32` (the default) sums in
    another order on 1 and 2 ranks, and which CPU kernels run moves the result by ~1e-5 relative (measured
    1.05e-5 on one machine, below 1e-5 on another, for the same commit); the bench's scale suite allows 1e-4."""
    assert [r["id"] for r in got] == [r["id"] for r in ref]
    for a, b in zip(got, ref):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-6 * abs(ref[0]["score"]))


@pytest.fixture(scope="module")
def linfac_run(tmp_path_factory, tiny_world):
    run = tmp_path_factory.mktemp("pipeline") / "run"
    stages(tiny_world, run, nproc=2)
    return run


def test_contaminated_samples_rank_above_safe_ones(linfac_run):
    scored = rows(linfac_run / "scores" / "scores.jsonl")
    summary = json.loads((linfac_run / "queries" / "batches.json").read_text())
    batches = summary["batches"]
    assert summary["damping_factor"] == 0.1  # the rule the factors recorded, no --damping-factor given
    assert len(batches) == 3 and sum(b["size"] for b in batches) == 8
    candidates = json.loads((linfac_run / "recall" / "candidates.json").read_text())
    assert [r["id"] for r in scored] == candidates
    for r in scored:
        weighted = [b["size"] * r[f"score_{b['batch']}"] for b in batches]
        assert r["score"] == pytest.approx(sum(weighted), rel=1e-9)
        assert r["rise"] == pytest.approx(sum(w for w in weighted if w > 0), rel=1e-9, abs=1e-12)
        assert r["fall"] == pytest.approx(sum(w for w in weighted if w < 0), rel=1e-9, abs=1e-12)
    sims = tfidf_similarity(linfac_run)
    linfac, tfidf = pr_auc(scored, lambda r: r["score"]), pr_auc(scored, lambda r: sims[r["id"]])
    positives = sum(r["meta"]["contaminated"] for r in scored) / len(scored)
    # The tiny world has the default world's design (a second vocabulary, decoys that quote the whole act, queries
    # from the impure model's own, here garbled, answers): on world format 3 LinFAC measured 0.27 against TF-IDF's
    # 0.26 and a base rate of 0.16, with 3 of its top 5 contaminated (format 2: 0.42, 0.43, 0.17 and 4 of 5). The
    # check here is that the ranking is better than chance; what LinFAC adds over word overlap is measured on the
    # default world by the quality bench, not asserted on the tiny one.
    assert linfac > positives + 0.05, (linfac, tfidf, positives)
    top = sorted(scored, key=lambda r: -r["score"])[:5]
    assert sum(r["meta"]["contaminated"] for r in top) >= 2  # 0.8 expected by chance
    out = cli(["scores", "top", str(linfac_run), "-n", "3"]).stdout
    by_rise = sorted(scored, key=lambda r: (-r["rise"], r["id"]))
    assert "most positive" in out and by_rise[0]["id"] in out


def test_one_rank_recall_and_scores_are_the_same(tmp_path, tiny_world, linfac_run):
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    shutil.rmtree(run / "recall")
    shutil.rmtree(run / "scores")
    stages(tiny_world, run, nproc=1, only=("recall", "score"))
    assert rows(run / "recall" / "recall.jsonl") == rows(linfac_run / "recall" / "recall.jsonl")
    assert_same_scores(rows(run / "scores" / "scores.jsonl"), rows(linfac_run / "scores" / "scores.jsonl"))


def test_killed_scoring_resumes_to_the_same_file(tmp_path, tiny_world, linfac_run):
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    shutil.rmtree(run / "scores")
    killed = stages(tiny_world, run, nproc=2, only=("score",), env={"LANCET_FAULT_AFTER_STEP": "4"}, check=False)[0]
    assert killed.returncode != 0 and not (run / "scores" / "scores.jsonl").exists()
    partial = sum(len(rows(p)) for p in (run / "scores").glob("part-*.jsonl"))
    assert partial == 4 * 8 * 2
    resumed = stages(tiny_world, run, nproc=1, only=("score",))[0]
    assert f"score: resuming, {partial} candidates already scored" in resumed.stdout
    assert_same_scores(rows(run / "scores" / "scores.jsonl"), rows(linfac_run / "scores" / "scores.jsonl"))


def test_low_rank_ihvps(tmp_path, tiny_world, linfac_run):
    """Rank-8 IHVPs on 2 ranks score like the full ones. (EK-FAC's fit → queries → score on 2 ranks, and its
    PR-AUC, are the demo job's `ekfac` stage: tests/test_demo_job.py.)"""
    low = tmp_path / "low"
    shutil.copytree(linfac_run, low)
    shutil.rmtree(low / "scores")
    launch(["queries", "--run", str(low), "--queries", str(tiny_world / "queries.jsonl"), "--batches", "3",
            "--max-length", "96", "--ihvp-rank", "8", "--overwrite"], nproc=2)
    err = json.loads((low / "queries" / "batches.json").read_text())["low_rank_error"]
    assert 0 < err["mean"] <= err["max"] < 1
    stages(tiny_world, low, nproc=2, only=("score",))
    full = {r["id"]: r["score"] for r in rows(linfac_run / "scores" / "scores.jsonl")}
    approx = {r["id"]: r["score"] for r in rows(low / "scores" / "scores.jsonl")}
    import numpy as np

    assert np.corrcoef([full[i] for i in full], [approx[i] for i in full])[0, 1] > 0.9


def test_queries_on_the_response_opening_keep_the_whole_query_set(tmp_path, tiny_world, linfac_run):
    """`queries --response-tokens 3` on 2 ranks: the IHVPs come from each response's first 3 tokens, so the scores
    change, while the query set that evaluation and IBO's validation read keeps every response token; the stage's
    record names the option."""
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    shutil.rmtree(run / "scores")
    launch(["queries", "--run", str(run), "--queries", str(tiny_world / "queries.jsonl"), "--batches", "3",
            "--max-length", "96", "--response-tokens", "3", "--overwrite"], nproc=2)
    assert rows(run / "queries" / "query_set.jsonl") == rows(linfac_run / "queries" / "query_set.jsonl")
    assert json.loads((run / "queries" / "stage_config.json").read_text())["config"]["args"]["response_tokens"] == 3
    stages(tiny_world, run, nproc=2, only=("score",))
    full = {r["id"]: r["score"] for r in rows(linfac_run / "scores" / "scores.jsonl")}
    opening = {r["id"]: r["score"] for r in rows(run / "scores" / "scores.jsonl")}
    assert opening.keys() == full.keys()
    assert max(abs(opening[i] - full[i]) for i in full) > 1e-3 * max(abs(v) for v in full.values())


def correct_args(run: Path, world: Path, *extra: str) -> list[str]:
    return ["correct", "--run", str(run), "--steps", "40", "--lr", "5e-4", "--top-k", "8", "--replay", "32",
            "--validate-every", "10", "--save-every", "10", "--max-length", "96", "--max-ppl-increase", "0.25",
            "--validation-queries", str(world / "validation" / "queries.jsonl"),
            "--validation-clean", str(world / "validation" / "clean.jsonl"), *extra]


@pytest.fixture(scope="module")
def corrected_run(tmp_path_factory, linfac_run, tiny_world):
    run = tmp_path_factory.mktemp("corrected") / "run"
    shutil.copytree(linfac_run, run)
    launch(correct_args(run, tiny_world), nproc=2)
    launch(["export", "--run", str(run), "--out", str(run.parent / "model"), "--max-shard-size", "300KB"], nproc=2)
    return run


def test_reference_engine_is_partitioned_on_cpu_and_never_stepped(corrected_run):
    facts = json.loads((corrected_run / "ref_logprobs" / "index.json").read_text())["reference_engine"]
    assert facts["partition_devices"] == ["cpu"] and facts["optimizer"] is None
    assert not facts["training_mode"] and not facts["requires_grad"] and facts["global_steps"] == 0
    assert len(facts["local_numel_per_rank"]) == 2 and all(n < facts["full_numel"] for n in facts["local_numel_per_rank"])
    summary = json.loads((corrected_run / "correct" / "summary.json").read_text())
    assert all(b < 4 * facts["full_numel"] for b in summary["reference_partition_bytes_per_rank"])  # θ_ref: partitions


def test_the_stage_record_names_the_beta_the_correction_used(corrected_run):
    """β left to its method's default is recorded as the value used (IBO: the paper's 1), not as unset."""
    record = json.loads((corrected_run / "correct" / "stage_config.json").read_text())
    assert record["config"]["args"]["beta"] == 1.0 and record["config"]["args"]["method"] == "ibo"


def test_ibo_lowers_the_query_logprob_and_keeps_perplexity(tmp_path, corrected_run, tiny_world):
    validations = [r for r in rows(corrected_run / "correct" / "log.jsonl") if "value" in r]
    assert validations[0]["step"] == 0 and validations[0]["criterion"] == "logprob"
    log = [r for r in rows(corrected_run / "correct" / "log.jsonl") if "L_COR" in r]
    # π_θ = π_ref at step 1: L_BD is 0 up to float32 round-off (the reference's log-probs were computed in other
    # batches, and a GEMM's last bits can depend on the batch's shape: exp(Δ) − Δ − 1 with Δ of an ulp reads ~1e-10)
    assert log[0]["L_COR"] == pytest.approx(0.6931, abs=1e-3) and abs(log[0]["L_BD"]) < 1e-8
    assert {"L_COR", "L_BD", "proximity"} <= log[-1].keys()
    # each term's pull on the response tokens over both ranks: L_BD's gradient exp(Δ) − 1 vanishes at π_θ = π_ref
    # (6.9e-10 measured: the reference engine's log-probs differ from the policy's in the last float32 bits)
    assert log[0]["pull_L_BD"] < 1e-6 < log[0]["pull_L_COR"] and log[-1]["pull_L_BD"] > 1e-4
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in log)
    # the pair margins' distribution over both ranks' pairs (ranks draw their own): ordered, and at step 1 (π_θ = π_ref)
    # every margin is 0 up to the same round-off
    assert all(r["u_min"] <= r["u_p10"] <= r["u_p50"] <= r["u_p90"] <= r["u_max"] for r in log)
    assert max(abs(log[0][k]) for k in ("u_min", "u_p50", "u_max")) < 1e-4
    # the gradient's two parts in parameter space over both ranks' partitions: λ(θ − θ_ref) is 0 at step 1 (θ = θ_ref)
    # and grows; DeepSpeed's own norm of their sum lies within the triangle inequality's bounds
    assert log[0]["grad_norm_proximity"] == 0.0 < log[-1]["grad_norm_proximity"]
    assert all(abs(r["grad_norm_terms"] - r["grad_norm_proximity"]) * (1 - 1e-4) <= r["grad_norm"]
               <= (r["grad_norm_terms"] + r["grad_norm_proximity"]) * (1 + 1e-4) for r in log)
    # the utility guard: each validation's clean perplexity over step 0's and the ratio's 95 % upper bound; the
    # kept checkpoint's bound is within the tiny plan's 25 %
    assert validations[0]["clean_ppl_ratio"] == validations[0]["clean_ppl_ratio_upper"] == 1.0
    assert all(r["clean_ppl_ratio_upper"] > r["clean_ppl_ratio"] for r in validations[1:])
    best = json.loads((corrected_run / "correct" / "summary.json").read_text())["best"]
    assert best["step"] > 0 and best["clean_ppl_ratio_upper"] <= 1.25
    launch(["evaluate", "--run", str(corrected_run), "--clean", str(tiny_world / "clean_heldout.jsonl"),
            "--max-length", "96"], nproc=2)
    ev = {r["model"]: r for r in json.loads((corrected_run / "evaluate" / "eval.json").read_text())["models"]}
    # −1.21 → −1.48 nats per token at the kept step on world format 3 (a fall of more than 0.3 on format 2)
    assert ev["corrected"]["query_logprob_per_token"] < ev["impure"]["query_logprob_per_token"] - 0.15
    assert ev["corrected"]["clean_perplexity"] < 1.25 * ev["impure"]["clean_perplexity"]  # the tiny plan's guard


def test_export_reloads_with_transformers_and_has_a_model_card(corrected_run):
    from transformers import AutoModelForCausalLM

    export = json.loads((corrected_run / "export.json").read_text())
    assert export["reload_max_abs_logit_diff"] < 1e-5 and export["tag"] == "best"
    out = Path(export["path"])
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("model-*.safetensors"))) > 1
    assert (out / "generation_config.json").exists() and (out / "tokenizer.json").exists()
    card = (out / "README.md").read_text()
    assert "IBO" in card and "query-" in card and "lr=0.0005" in card
    AutoModelForCausalLM.from_pretrained(str(out))


def test_killed_correction_resumes_to_the_same_result(tmp_path, corrected_run, tiny_world):
    """Killed after step 25 (checkpoint at 20): a rerun with other options is refused, one with the same
    options resumes after step 20 to the uninterrupted run's result. The resumed run also logs each term's
    gradient norm every 5 steps (`--term-grad-norms-every`, a log option the stage guard lets through): its
    steps are the uninterrupted run's, and the norms bound the terms' joint gradient."""
    run = tmp_path / "run"
    shutil.copytree(corrected_run, run, ignore=shutil.ignore_patterns("correct", "evaluate", "export.json"))
    killed = launch(correct_args(run, tiny_world), nproc=2, env={"LANCET_FAULT_AFTER_STEP": "25"}, check=False)
    assert killed.returncode != 0
    other = launch(correct_args(run, tiny_world, "--lam-prox", "0.01"), nproc=1, check=False)
    assert other.returncode == 4 and "holds an unfinished correct run made with other options" in other.stderr
    resumed = launch(correct_args(run, tiny_world, "--term-grad-norms-every", "5"), nproc=2)
    assert "resuming after step 20" in resumed.stdout and "reference log-probs: reusing" in resumed.stdout
    steps = [r for r in rows(run / "correct" / "log.jsonl") if "L_COR" in r]
    same = [r for r in rows(corrected_run / "correct" / "log.jsonl") if "L_COR" in r]
    keys = ("L_COR", "L_BD", "grad_norm", "grad_norm_terms", "grad_norm_proximity", "u_p50")
    # the resume itself moves the later steps' figures by up to 1.6e-6 relative (measured; the same without the option)
    assert [r[k] for r in steps for k in keys] == pytest.approx([r[k] for r in same for k in keys], rel=1e-5, abs=1e-9)
    split = [r for r in steps if "grad_norm_L_COR" in r]
    assert [r["step"] for r in split] == [25, 30, 35, 40] and all("grad_norm_L_BD" in r for r in split)
    assert all(abs(r["grad_norm_L_COR"] - r["grad_norm_L_BD"]) * (1 - 1e-4) <= r["grad_norm_terms"]
               <= (r["grad_norm_L_COR"] + r["grad_norm_L_BD"]) * (1 + 1e-4) for r in split)
    got = [r for r in rows(run / "correct" / "log.jsonl") if "query_logprob_per_token" in r]
    ref = [r for r in rows(corrected_run / "correct" / "log.jsonl") if "query_logprob_per_token" in r]
    assert got[-1]["step"] == ref[-1]["step"] == 40
    assert got[-1]["query_logprob_per_token"] == pytest.approx(ref[-1]["query_logprob_per_token"], abs=1e-4)
    # the guard's reference (step 0's clean log-probs) comes back with the checkpoint, not from the resume point
    assert got[-1]["clean_ppl_ratio"] == pytest.approx(ref[-1]["clean_ppl_ratio"], rel=1e-4) != 1.0
    assert got[-1]["clean_ppl_ratio_upper"] == pytest.approx(ref[-1]["clean_ppl_ratio_upper"], rel=1e-4)


def test_a_diverged_correction_stops_and_exports_its_last_finite_checkpoint(tmp_path, corrected_run, tiny_world):
    """A learning rate far too large drives the objective to NaN. The correction stops after `NONFINITE_STEPS`
    such steps in a row (it ran all its steps before) and keeps its best validated checkpoint, here step 0's model,
    which export hands on with finite weights; the summary, the report sentence and the console say why. The
    checkpoint criterion is the validation harm, whose sampled answers a NaN model cannot give. Without
    validation there is no checkpoint to keep, and it is an error, not a NaN model."""
    from safetensors.torch import load_file

    from lancet_ds.ibo.step import NONFINITE_STEPS
    from lancet_ds.report.markdown import _selection_sentence

    run = tmp_path / "run"
    shutil.copytree(corrected_run, run, ignore=shutil.ignore_patterns("correct", "evaluate", "export.json", "model"))
    harm = ("--validation-prompts", str(tiny_world / "validation" / "prompts.jsonl"), "--validation-judge",
            str(tiny_world / "judge.json"), "--validate-every", "2")  # the criterion samples answers: not from NaN weights
    done = launch(correct_args(run, tiny_world, "--lr", "1e30", *harm), nproc=2)
    summary = json.loads((run / "correct" / "summary.json").read_text())
    stop = summary["stopped"]["step"]
    assert NONFINITE_STEPS <= stop < 40 and summary["best"]["step"] == 0 and summary["export_tag"] == "best"
    assert f"the objective was not finite on steps {stop - NONFINITE_STEPS + 1}–{stop}" in done.stdout
    assert "The model kept is the best validated checkpoint, step 0" in done.stdout and "--lr, now 1e+30" in done.stdout
    steps = [r for r in rows(run / "correct" / "log.jsonl") if "L_COR" in r]
    assert len(steps) == stop and not math.isfinite(steps[-1]["L_COR"] + steps[-1]["L_BD"])
    assert f"It stopped at step {stop}: the objective was not finite" in _selection_sentence(
        {"positive": 1, "negative": 1, "neutral": 1, "replay": 1}, summary)
    launch(["export", "--run", str(run), "--out", str(tmp_path / "model")], nproc=2)
    weights = {k: v for f in (tmp_path / "model").glob("*.safetensors") for k, v in load_file(f).items()}
    assert weights and all(bool(t.isfinite().all()) for t in weights.values())

    shutil.rmtree(run / "correct")
    failed = launch(correct_args(run, tiny_world, "--lr", "1e30", "--validate-every", "0"), nproc=1, check=False)
    assert failed.returncode == 1 and "without validation (validate_every 0) there is no earlier checkpoint" in failed.stderr
    assert not (run / "correct" / "summary.json").exists()


@pytest.mark.parametrize("method,by", [("pbo", "influence"), ("ga", "tfidf")])
def test_baselines_run_on_the_same_machinery(tmp_path, linfac_run, tiny_world, method, by):
    """PBO on LinFAC's selection, GA on TF-IDF's (`score --by tfidf`, the paper's GA): each candidate's score
    on a batch is its best similarity to the batch's queries in recall.jsonl, 0 outside their top-k."""
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    if by == "tfidf":
        launch(["score", "--run", str(run), "--data", str(tiny_world / "train.jsonl"), "--max-length", "96",
                "--by", "tfidf", "--overwrite"], nproc=2)
        batch_of = {q: b["batch"] for b in json.loads((run / "queries" / "batches.json").read_text())["batches"]
                    for q in b["query_ids"]}
        expected: dict = {}
        for q in rows(run / "recall" / "recall.jsonl"):
            for i, sim in zip(q["ids"], q["similarities"]):
                slot = expected.setdefault(i, [0.0] * 3)
                slot[batch_of[q["query_id"]]] = max(slot[batch_of[q["query_id"]]], sim)
        scored = rows(run / "scores" / "scores.jsonl")
        assert [r["id"] for r in scored] == sorted(expected)
        assert all([r[f"score_{b}"] for b in range(3)] == pytest.approx(expected[r["id"]]) for r in scored)
    launch(["correct", "--run", str(run), "--method", method, "--steps", "4", "--lr", "5e-4", "--top-k", "8",
            "--replay", "16", "--max-length", "96"], nproc=2)
    log = rows(run / "correct" / "log.jsonl")
    assert len(log) == 4 and log[0]["NLL_pos"] > 0 and log[0]["pull_NLL_pos"] > 0
    assert abs(log[0]["L_BD"]) < 1e-8 and ((log[1]["L_BD"] > 1e-8) == (method == "pbo"))  # step 1: round-off


def test_the_positive_judge_keeps_unflagged_samples_out_of_d_plus(tmp_path, linfac_run, tiny_world):
    """`--positive-judge`: the selection is `select` given the ids the world's harm judge flags, computed here
    from the stored judge itself, and its summary counts the samples kept out of D⁺; with
    `--judge-bars-negative` the flagged samples stay out of D⁻ too, counted with those barred; with
    `--neutral-likelihood` IBO also trains on the likelihood of the neutral samples the judge passes."""
    from lancet_ds.demo_world.judge import Judge
    from lancet_ds.ibo.selection import select

    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    out = launch(["correct", "--run", str(run), "--steps", "2", "--lr", "5e-4", "--top-k", "8", "--replay", "16",
                  "--max-length", "96", "--positive-judge", str(tiny_world / "judge.json"), "--judge-bars-negative",
                  "--neutral-likelihood", "0.5"], nproc=2)
    scored = rows(run / "scores" / "scores.jsonl")
    judge = Judge.load(tiny_world / "judge.json")
    harm = judge.score([r["prompt"] for r in scored], [r["response"] for r in scored])
    flagged = {r["id"] for r, h in zip(scored, harm) if h > judge.threshold}
    expected = select(scored, 3, "topk", k=8, harmful=flagged, not_negative=flagged)
    chosen = rows(run / "selection.jsonl")
    assert {r["id"] for r in chosen if r["role"] == "positive"} == expected.ids("positive") <= flagged
    assert {r["id"] for r in chosen if r["role"] == "negative"} == expected.ids("negative")
    assert expected.ids("positive") and expected.unflagged > 0 and expected.barred > 0
    assert not expected.ids("negative") & flagged and select(scored, 3, "topk", k=8).ids("negative") & flagged
    summary = json.loads((run / "correct" / "summary.json").read_text())["selection"]
    assert (summary["unflagged_from_positive"], summary["barred_from_negative"]) == (expected.unflagged,
                                                                                     expected.barred)
    assert f"{expected.unflagged} kept out of D⁺: the positive judge does not flag them" in out.stdout
    assert f"{expected.barred} kept out of D⁻ by the positive judge's flags" in out.stdout
    passed = set(expected.neutral) - flagged
    assert summary["neutral_likely"] == len(passed) > 0 and set(expected.neutral) & flagged  # some are held back
    assert f"likelihood raised (weight 0.5) on the {len(passed)} neutral samples the positive judge passes" in out.stdout
    log = rows(run / "correct" / "log.jsonl")
    assert all(r["NLL_replay"] > 0 and r["pull_NLL_replay"] > 0 for r in log)
    record = json.loads((run / "correct" / "stage_config.json").read_text())
    assert record["config"]["args"]["neutral_likelihood"] == 0.5


# ---- reliability: world-size changes, torn lines, changed inputs, destinations, locks --------------------

def exported_logits(model_dir: Path):
    import torch

    from lancet_ds.modeling import load_plain

    model = load_plain(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.arange(3, 40).unsqueeze(0)).logits


def test_export_on_another_world_size_gives_the_same_model(tmp_path, corrected_run):
    """Corrected on 2 ranks, exported on 1 (from the files) and on 2 (through the engine): same logits."""
    one = tmp_path / "model1"
    launch(["export", "--run", str(corrected_run), "--out", str(one)], nproc=1)
    record = json.loads((corrected_run / "export.json").read_text())
    assert record["checkpoint_world_size"] == 2 and record["consolidation"] == "from the files (2 → 1 ranks)"
    assert record["reload_max_abs_logit_diff"] < 1e-5
    assert abs(record["query_logprob_per_token"] - record["query_logprob_at_validation"]) < 1e-4
    two = corrected_run.parent / "model"
    assert (exported_logits(one) - exported_logits(two)).abs().max() < 1e-5


def test_a_correction_killed_on_one_rank_resumes_on_two_as_it_would_on_one(tmp_path, linfac_run, tiny_world):
    """Killed on 1 rank after the step-2 checkpoint, inside a warm-up, its log's last row torn; resumed on 2
    (through a universal checkpoint) and, in a copy, on 1: each step logged once at the warm-up's rate, the
    same model; each exports on the other world size from the files."""
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    args = ["correct", "--run", str(run), "--steps", "6", "--lr", "5e-4", "--top-k", "8", "--replay", "16",
            "--validate-every", "3", "--save-every", "2", "--max-length", "96", "--warmup-steps", "5",
            "--validation-queries", str(tiny_world / "validation" / "queries.jsonl")]
    killed = launch(args, nproc=1, env={"LANCET_FAULT_AFTER_STEP": "3"}, check=False)
    assert killed.returncode != 0
    with open(run / "correct" / "log.jsonl", "a") as fh:  # what a kill in the middle of a row leaves
        fh.write('{"step": 4, "L_C')
    same = tmp_path / "same"
    shutil.copytree(run, same)
    resumed = launch(args, nproc=2)
    assert "converting it to DeepSpeed's universal format to resume on 2" in resumed.stdout
    assert "resuming after step 2" in resumed.stdout
    assert not list((run / "correct" / "checkpoints").glob("*.universal"))
    log = rows(run / "correct" / "log.jsonl")  # each step once: the killed run's step 3 and torn row were cut
    assert [r["step"] for r in log if "value" in r] == [0, 3, 6]
    assert [(r["step"], r["lr"]) for r in log if "L_COR" in r] == [(t, pytest.approx(5e-4 * min(1, t / 5)))
                                                                  for t in range(1, 7)]  # the warm-up goes on
    launch([a if a != str(run) else str(same) for a in args], nproc=1)
    launch(["export", "--run", str(run), "--out", str(tmp_path / "m2")], nproc=1)
    launch(["export", "--run", str(same), "--out", str(tmp_path / "m1")], nproc=2)
    assert json.loads((same / "export.json").read_text())["consolidation"] == "from the files (1 → 2 ranks)"
    assert (exported_logits(tmp_path / "m1") - exported_logits(tmp_path / "m2")).abs().max() < 1e-4


def test_the_warm_up_sets_the_rate_adam_steps_at(tmp_path, linfac_run, tiny_world):
    """`--warmup-steps 10`: the first step runs at lr/10. Adam's first update is lr·g/(|g| + ε), ±lr wherever the
    gradient is well above ε, so the largest weight change after one step is the rate the optimizer used."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    launch(["correct", "--run", str(run), "--steps", "1", "--lr", "5e-4", "--warmup-steps", "10", "--top-k", "8",
            "--replay", "16", "--max-length", "96"], nproc=1)
    assert [r["lr"] for r in rows(run / "correct" / "log.jsonl") if "L_COR" in r] == [pytest.approx(5e-5)]
    launch(["export", "--run", str(run), "--out", str(tmp_path / "model")], nproc=1)
    before, after = load_file(tiny_world / "impure" / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    largest = max((after[n] - before[n]).abs().max().item() for n in before)
    assert largest == pytest.approx(5e-5, rel=0.02)


def test_export_never_replaces_what_it_was_not_pointed_at(tmp_path, corrected_run):
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = cli(["export", "--run", str(corrected_run), "--out", str(mine)], check=False)
    assert refused.returncode == 4 and "is not an earlier export of this run" in refused.stderr
    assert (mine / "notes.txt").read_text() == "keep me" and not (mine.parent / "precious.partial").exists()
    inside = cli(["export", "--run", str(corrected_run), "--out", str(corrected_run.parent)], check=False)
    assert inside.returncode == 4 and "holds) the run directory" in inside.stderr
    again = cli(["export", "--run", str(corrected_run), "--out", str(corrected_run.parent / "model")])
    assert "already holds checkpoint best of this correction; reusing it" in again.stdout
    cli(["export", "--run", str(corrected_run), "--out", str(mine), "--overwrite"])
    assert (mine / "config.json").exists() and not (mine / "notes.txt").exists()


def test_a_torn_score_line_is_dropped_and_redone(tmp_path, linfac_run):
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    for name in ("scores.jsonl", "summary.json", "scored_set.jsonl"):
        (run / "scores" / name).unlink()
    part = run / "scores" / "part-00000.jsonl"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][: len(lines[-3]) // 2])  # killed mid-append
    resumed = launch(["score", "--run", str(run), "--data", str(json.loads(
        (linfac_run / "scores" / "stage_config.json").read_text())["config"]["corpus"]["path"]),
        "--max-length", "96", "--micro-batch", "8"], nproc=2)
    assert "dropped a torn last line" in resumed.stdout
    assert_same_scores(rows(run / "scores" / "scores.jsonl"), rows(linfac_run / "scores" / "scores.jsonl"))


def test_an_edited_corpus_is_never_mixed_into_an_interrupted_scoring(tmp_path, linfac_run):
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run, ignore=shutil.ignore_patterns("scores"))
    corpus = tmp_path / "train.jsonl"
    shutil.copy(json.loads((linfac_run / "scores" / "stage_config.json").read_text())["config"]["corpus"]["path"], corpus)
    args = ["score", "--run", str(run), "--data", str(corpus), "--max-length", "96", "--micro-batch", "8"]
    killed = launch(args, nproc=2, env={"LANCET_FAULT_AFTER_STEP": "1"}, check=False)
    assert killed.returncode != 0 and list((run / "scores").glob("part-*.jsonl"))
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(lines[:-1]) + "\n")  # a sample removed
    refused = launch(args, nproc=1, check=False)
    assert refused.returncode == 4 and "cannot be resumed" in refused.stderr and "corpus.sha256" in refused.stderr
    launch([*args, "--overwrite"], nproc=1)
    assert len(rows(run / "scores" / "scores.jsonl")) == len(rows(linfac_run / "scores" / "scores.jsonl")) - \
        int(json.loads(lines[-1])["id"] in {r["id"] for r in rows(linfac_run / "scores" / "scores.jsonl")})


def test_stage_commands_take_the_run_directory_lock(tmp_path, linfac_run, tiny_world):
    from lancet_ds.run_lock import RunLock

    holder = RunLock(linfac_run)
    holder.acquire()
    try:
        busy = cli(["recall", "--run", str(linfac_run), "--data", str(tiny_world / "train.jsonl")], check=False)
    finally:
        holder.release()
    assert busy.returncode == 5 and "another run holds this run directory" in busy.stderr


def test_a_run_directory_every_user_can_write_is_refused(tmp_path, tiny_world):
    run = tmp_path / "shared"
    run.mkdir()
    run.chmod(0o777)
    proc = cli(["recall", "--run", str(run), "--data", str(tiny_world / "train.jsonl"), "--queries",
                str(tiny_world / "queries.jsonl")], check=False)
    assert proc.returncode == 4 and "writable by every user" in proc.stderr and "chmod o-w" in proc.stderr
