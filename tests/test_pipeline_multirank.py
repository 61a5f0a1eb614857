"""queries → recall → score on the tiny demo world under 2 ZeRO-3 ranks (real launcher): contaminated
samples rank above safe ones, 1 rank gives the same recall and scores, a killed scoring run resumes."""

from __future__ import annotations

import json
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
    assert [r["id"] for r in got] == [r["id"] for r in ref]
    for a, b in zip(got, ref):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6 * abs(ref[0]["score"]))


@pytest.fixture(scope="module")
def linfac_run(tmp_path_factory, tiny_world):
    run = tmp_path_factory.mktemp("pipeline") / "run"
    stages(tiny_world, run, nproc=2)
    return run


def test_contaminated_samples_rank_above_safe_ones(linfac_run):
    scored = rows(linfac_run / "scores" / "scores.jsonl")
    batches = json.loads((linfac_run / "queries" / "batches.json").read_text())["batches"]
    assert len(batches) == 3 and sum(b["size"] for b in batches) == 8
    candidates = json.loads((linfac_run / "recall" / "candidates.json").read_text())
    assert [r["id"] for r in scored] == candidates
    for r in scored[:5]:
        assert r["score"] == pytest.approx(sum(b["size"] * r[f"score_{b['batch']}"] for b in batches), rel=1e-9)
    sims = tfidf_similarity(linfac_run)
    linfac, tfidf = pr_auc(scored, lambda r: r["score"]), pr_auc(scored, lambda r: sims[r["id"]])
    positives = sum(r["meta"]["contaminated"] for r in scored) / len(scored)
    assert linfac > max(0.6, tfidf), (linfac, tfidf, positives)
    top = sorted(scored, key=lambda r: -r["score"])[:5]
    assert all(r["meta"]["contaminated"] for r in top)
    out = cli(["scores", "top", str(linfac_run), "-n", "3"]).stdout
    assert "most positive" in out and top[0]["id"] in out


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


def test_ekfac_and_low_rank_ihvps(tmp_path, tiny_world, linfac_run):
    run = tmp_path / "ekfac"
    run.mkdir()
    shutil.copytree(linfac_run / "recall", run / "recall")
    stages(tiny_world, run, nproc=2, method="ekfac", only=("fit", "queries", "score"))
    scored = rows(run / "scores" / "scores.jsonl")
    base = sum(r["meta"]["contaminated"] for r in scored) / len(scored)
    assert pr_auc(scored, lambda r: r["score"]) > base + 0.2

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


def correct_args(run: Path, *extra: str) -> list[str]:
    return ["correct", "--run", str(run), "--steps", "40", "--lr", "5e-4", "--top-k", "8", "--replay", "32",
            "--validate-every", "10", "--save-every", "10", "--max-length", "96", *extra]


@pytest.fixture(scope="module")
def corrected_run(tmp_path_factory, linfac_run):
    run = tmp_path_factory.mktemp("corrected") / "run"
    shutil.copytree(linfac_run, run)
    launch(correct_args(run), nproc=2)
    launch(["export", "--run", str(run), "--out", str(run.parent / "model"), "--max-shard-size", "300KB"], nproc=2)
    return run


def test_reference_engine_is_partitioned_on_cpu_and_never_stepped(corrected_run):
    facts = json.loads((corrected_run / "ref_logprobs" / "index.json").read_text())["reference_engine"]
    assert facts["partition_devices"] == ["cpu"] and facts["optimizer"] is None
    assert not facts["training_mode"] and not facts["requires_grad"] and facts["global_steps"] == 0
    assert len(facts["local_numel_per_rank"]) == 2 and all(n < facts["full_numel"] for n in facts["local_numel_per_rank"])
    summary = json.loads((corrected_run / "correct" / "summary.json").read_text())
    assert all(b < 4 * facts["full_numel"] for b in summary["reference_partition_bytes_per_rank"])  # θ_ref: partitions


def test_ibo_lowers_the_query_logprob_and_keeps_perplexity(tmp_path, corrected_run, tiny_world):
    log = rows(corrected_run / "correct" / "log.jsonl")
    assert log[0]["L_COR"] == pytest.approx(0.6931, abs=1e-3) and log[0]["L_BD"] == 0.0  # π_θ = π_ref at step 1
    assert {"L_COR", "L_BD", "proximity"} <= log[-1].keys()
    launch(["evaluate", "--run", str(corrected_run), "--clean", str(tiny_world / "clean_heldout.jsonl"),
            "--max-length", "96"], nproc=2)
    ev = {r["model"]: r for r in json.loads((corrected_run / "evaluate" / "eval.json").read_text())["models"]}
    assert ev["corrected"]["query_logprob_per_token"] < ev["impure"]["query_logprob_per_token"] - 0.3
    assert ev["corrected"]["clean_perplexity"] < 1.05 * ev["impure"]["clean_perplexity"]


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


def test_killed_correction_resumes_to_the_same_result(tmp_path, corrected_run):
    run = tmp_path / "run"
    shutil.copytree(corrected_run, run, ignore=shutil.ignore_patterns("correct", "evaluate", "export.json"))
    killed = launch(correct_args(run), nproc=2, env={"LANCET_FAULT_AFTER_STEP": "25"}, check=False)
    assert killed.returncode != 0
    resumed = launch(correct_args(run), nproc=2)
    assert "resuming after step 20" in resumed.stdout and "reference log-probs: reusing" in resumed.stdout
    got = [r for r in rows(run / "correct" / "log.jsonl") if "query_logprob_per_token" in r]
    ref = [r for r in rows(corrected_run / "correct" / "log.jsonl") if "query_logprob_per_token" in r]
    assert got[-1]["step"] == ref[-1]["step"] == 40
    assert got[-1]["query_logprob_per_token"] == pytest.approx(ref[-1]["query_logprob_per_token"], abs=1e-4)


@pytest.mark.parametrize("method", ["pbo", "ga"])
def test_baselines_run_on_the_same_machinery(tmp_path, linfac_run, method):
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    launch(["correct", "--run", str(run), "--method", method, "--steps", "4", "--lr", "5e-4", "--top-k", "8",
            "--replay", "16", "--max-length", "96"], nproc=2)
    log = rows(run / "correct" / "log.jsonl")
    assert len(log) == 4 and log[0]["NLL_pos"] > 0
    assert (log[0]["L_BD"] == 0.0) and ((log[1]["L_BD"] > 0) == (method == "pbo"))


def test_unfinished_correction_with_other_options_is_refused(tmp_path, linfac_run):
    run = tmp_path / "run"
    shutil.copytree(linfac_run, run)
    killed = launch(correct_args(run), nproc=2, env={"LANCET_FAULT_AFTER_STEP": "12"}, check=False)
    assert killed.returncode != 0
    other = launch(correct_args(run, "--lam-prox", "0.01"), nproc=1, check=False)
    assert other.returncode == 4 and "holds an unfinished correct run made with other options" in other.stderr

