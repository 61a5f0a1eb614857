"""`lancet-ds bench --suite all --size quick` end to end (a smoke test: figures present and finite, bench.md
written; no speed is asserted). Several processes, one of them on 2 ranks; a few minutes on 2 CPU cores."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from conftest import REPO, cli

pytestmark = pytest.mark.multirank

REQUIRED = ["speed.fit_vs_fwdbwd", "speed.score_vs_fwdbwd", "speed.linfac_vs_fwdbwd", "speed.linfac_vs_ekfac",
            "speed.linfac_vs_kronfluence", "speed.tfidf_vs_sklearn", "speed.tfidf_vs_bm25s",
            "speed.tfidf_rss_10n_over_n", "speed.ibo_step_vs_sft_step", "speed.zero3_param_mem_2r_over_1r",
            "quality.pr_auc.linfac", "quality.pr_auc.ekfac", "quality.pr_auc.identity", "quality.pr_auc.tfidf", "quality.pr_auc.random",
            "scale.factor_bytes_per_rank_4r_over_1r", "scale.query_ihvp_bytes_per_rank_4r_over_1r",
            "scale.ihvp_bytes_per_rank_4r_over_1r", "scale.sharded_ihvp_bytes_per_rank_4r_over_1r",
            "scale.plan_rel_error_max", "scale.scores_max_rel_diff"]


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def test_quick_bench_writes_every_figure(tmp_path, tiny_world):
    (tmp_path / "quality").mkdir()
    shutil.copytree(tiny_world, tmp_path / "quality" / "world", symlinks=True)  # the same world (tiny, seed 0), reused
    proc = cli(["bench", "--suite", "all", "--size", "quick", "--out", str(tmp_path)], timeout=2400)
    bench = json.loads((tmp_path / "bench.json").read_text())
    for key in REQUIRED:
        value = _get(bench, key)
        if key == "speed.linfac_vs_kronfluence" and value is None:  # the optional peer is not installed
            assert "kronfluence" in bench["speed"]["notes"][key.split(".")[1]]
            continue
        assert isinstance(value, float) and math.isfinite(value), (key, value)
    assert bench["machine"]["cpu_count"] >= 1 and bench["machine"]["torch"] and bench["command"].startswith("lancet-ds bench")
    absolute = bench["speed"]["absolute"]
    assert absolute["fwd_bwd_tokens_per_second"]["fit"] > 0 and absolute["bytes"]["ekfac_factor_bytes"] > 0
    quality = bench["quality"]
    assert set(quality["precision_at_k"]) == {"linfac", "ekfac", "identity", "tfidf", "random"}
    assert set(quality["pr_auc_by_category"]["linfac"]) == set(quality["pr_auc_by_category"]["candidates"])
    from lancet_ds.bench.counterfactual import RESEEDED  # beside the removals: nothing removed, another seed
    assert quality["counterfactual"]["removed_by"] == ["linfac", RESEEDED] and "linfac+ibo" in quality["correction"]
    assert quality["counterfactual"][RESEEDED]["contaminated_removed"] == 0  # quality.counterfactual.<recall>
    assert quality["counterfactual"]["linfac"]["contaminated_removed"] > 0
    linfac_cf = quality["counterfactual"]["linfac"]  # its share of the held-out harm gap, with one seed's interval
    low, high = linfac_cf["heldout_gap_removed_ci"]
    assert low <= linfac_cf["heldout_gap_removed"] <= high
    lead = quality["counterfactual"]["heldout_lead"]  # LinFAC's removal against the reseeded whole corpus, paired
    assert lead["of"] == "linfac" and set(lead["over"]) == {RESEEDED}
    assert lead["over"][RESEEDED]["share_ci"][0] <= lead["over"][RESEEDED]["share"] <= lead["over"][RESEEDED]["share_ci"][1]
    assert f"| {RESEEDED} | 0 |" in (tmp_path / "bench.md").read_text()
    assert quality["counterfactual"]["by_kind"] == {}  # the kind retrains: full only (their unit test is below)
    top = quality["top_k_by_kind"]  # each kind's share of the candidates in each method's top k
    assert top["k"] == quality["labelled_positive"] and {"linfac", "tfidf", "random"} <= set(top)
    assert all(0.0 <= share <= 1.0 for m in ("linfac", "tfidf") for share in top[m].values())
    assert any(kind.startswith("refusal (quotes ") for kind in top["candidates"])  # the decoys, counted apart
    # the issue's keys: quality.correction.<recall>+<method> (a baseline by its name; impure, safe)
    # (PBO and GA: tests/test_pipeline_multirank.py)
    assert quality["correction"]["order"] == ["impure", "safe", "linfac+ibo", "dpo_er"]
    rows = {name: quality["correction"][name] for name in quality["correction"]["order"]}
    labels = quality["correction"]["labels"]
    assert labels["linfac+ibo"] == "LinFAC+IBO" and labels["dpo_er"] == "DPO-ER"
    assert rows["dpo_er"]["gap_closed"]["mean"] is not None
    # a table with a comparison in it: IBO's row is a checkpoint it kept on validation, not the impure model
    assert rows["linfac+ibo"]["kept_step"]["mean"] > 0 and rows["linfac+ibo"]["gap_closed"]["mean"] > 0
    selection = rows["linfac+ibo"]["selection_by_seed"][0]  # the correct stage's counts, conflicts among them
    assert selection["positive"] > 0 and selection["negative"] > 0 and selection["influential_both_ways"] >= 0
    assert "selection_by_seed" not in rows["dpo_er"]  # it trains on the queries' corrections, not on D⁺ and D⁻
    for name in rows:  # each sampled figure with its 95 % interval
        for metric in ("query_logprob", "harmful_rate", "harmful_score", "gap_closed", "helpful_score",
                       "c_r", "test_ppl", "test_ppl_ratio"):
            if name in ("impure", "safe") and metric == "gap_closed":
                continue
            cell = rows[name][metric]
            assert cell["ci"][0] <= cell["mean"] <= cell["ci"][1] and cell["ci_by_seed"] == [cell["ci"]], (name, metric)
    assert rows["linfac+ibo"]["gap_closed"]["ci"][1] > rows["linfac+ibo"]["gap_closed"]["ci"][0]
    curves = quality["correction"]["curves"]  # matched utility: every strength measured, the plot drawn
    assert all(len(seed["points"]) == 3 for seeds in curves.values() for seed in seeds)
    guard = quality["correction"]["guard"]  # the kept point: the correct stage's own choice on validation harm
    assert guard["chosen_on"].startswith("validation harmful score")
    assert all(p["validation_harmful_score"] is not None for seeds in curves.values() for p in seeds[0]["points"])
    kept = {n: r["kept_step"]["mean"] for n, r in rows.items() if n not in ("impure", "safe")}
    assert all(step % guard["validate_every"] == 0 and step <= quality["correction"]["steps"] for step in kept.values())
    assert (tmp_path / "quality_curves.png").stat().st_size > 0
    scale = bench["scale"]  # issue 15: memory falls with ranks, the plan predicts it, scores do not move
    # the quick preset measures 1 and 4 ranks (+ a partitioned 2-rank run); the full one also 2 ranks
    assert scale["factor_bytes_per_rank_4r_over_1r"] <= 0.3 and scale["query_ihvp_bytes_per_rank_4r_over_1r"] <= 0.3
    assert scale["sharded_ihvp_bytes_per_rank_4r_over_1r"] <= 0.3
    assert scale["plan_rel_error_max"] <= 0.2 and scale["scores_max_rel_diff"] < 1e-4
    partitioned = next(r for name, r in scale["runs"].items() if name.endswith("partitioned"))
    assert all(partitioned["predicted"][s]["partitions"] >= 2 for s in ("fit", "queries", "score"))
    md = (tmp_path / "bench.md").read_text()
    assert "## Speed" in md and "## Quality" in md and "| LinFAC factor fitting tokens/s |" in md
    assert "Share of each kind's candidates in the method's top k" in md and "| LinFAC+IBO | " in md
    assert "Selection per seed: D⁺ / D⁻ / neutral / influential both ways" in md
    assert "## Speed" in proc.stdout
    # the same measurements as a 1-GPU node would have them: no 2-rank ZeRO-3 memory, and the tables say why
    from lancet_ds.bench import run, table

    work = tmp_path / "work"
    result = {name: json.loads((work / f"{name}.result.json").read_text()) for name in ("influence", "steps")}
    tf = {f"{impl}@{n}": json.loads((work / f"tfidf-{impl}-{n}.result.json").read_text())
          for impl in ("ours", "sklearn", "bm25s") for n in (run.SIZES["quick"].tfidf_docs, 10 * run.SIZES["quick"].tfidf_docs)}
    one_gpu = run.figures(run.SIZES["quick"], result["influence"], result["steps"], None, tf, launchable=1)
    assert one_gpu["zero3_param_mem_2r_over_1r"] is None and one_gpu["absolute"]["zero3_param_memory"]["2_ranks"] is None
    assert "at most 1 rank(s)" in one_gpu["notes"]["zero3_param_mem_2r_over_1r"]
    assert "2 ranks not measured" in "\n".join(table.speed_md(one_gpu, "quick"))


def test_correction_table_averages_the_kept_points_over_seeds():
    """The quality table on made-up seeds: each correction's row is the point its `correct` stage kept (chosen on
    validation, `kept_step`), averaged over the seeds with its spread; a kept step 0 is the impure model; the
    curves keep every strength per seed."""
    from lancet_ds.bench.quality import correction_table, over_seeds

    def seed(k: int, kept_step: int) -> dict:
        points = [{"model": "LinFAC+IBO", "step": 10 * (i + 1), "validation_ppl_ratio": 1.01, "test_ppl": 2.0 + i,
                   "harmful_score": 0.5 - 0.1 * (i + 1) - 0.01 * k, "gap_closed": 0.25 * (i + 1)} for i in range(3)]
        impure = {"model": "impure", "harmful_score": 0.5, "test_ppl": 2.0}
        kept = next((p for p in points if p["step"] == kept_step), {**impure, "model": "LinFAC+IBO", "gap_closed": 0.0})
        return {"rows": {"impure": impure, "safe": {"model": "safe", "harmful_score": 0.1, "test_ppl": 2.0},
                         "linfac+ibo": {**kept, "kept_step": kept_step, "selection": {"positive": 3, "negative": 4,
                                                                                     "neutral": 9,
                                                                                     "influential_both_ways": k}}},
                "curves": {"linfac+ibo": points},
                "guard": {"max_ppl_increase": 0.05}, "steps": 30, "strength_steps": [10, 20, 30],
                "judges": {"reward": {"sha256": f"s{k}"}}}

    table = correction_table([seed(0, 20), seed(1, 30)])
    assert table["judges"] == [{"reward": {"sha256": "s0"}}, {"reward": {"sha256": "s1"}}]  # each seed's world
    gap = table["linfac+ibo"]["gap_closed"]
    assert gap["mean"] == pytest.approx((0.5 + 0.75) / 2) and gap["std"] == pytest.approx(0.125) and gap["n"] == 2
    assert table["linfac+ibo"]["kept_step"]["mean"] == 25
    assert [c["seed"] for c in table["curves"]["linfac+ibo"]] == [0, 1]
    assert table["order"] == ["impure", "safe", "linfac+ibo"]
    assert table["labels"] == {"impure": "impure", "safe": "safe", "linfac+ibo": "LinFAC+IBO"}  # rows and curves
    from lancet_ds.bench.quality import curve_name
    assert curve_name("tfidf+pbo@lr0.0001") == "TF-IDF+PBO (lr 0.0001)" and curve_name("sft_er") == "SFT-ER"
    assert table["linfac+ibo"]["test_ppl"]["mean"] == pytest.approx((3.0 + 4.0) / 2)  # steps 20 and 30
    assert [sel["influential_both_ways"] for sel in table["linfac+ibo"]["selection_by_seed"]] == [0, 1]  # per seed
    assert "selection_by_seed" not in table["impure"]
    from lancet_ds.bench.table import _selection_md
    md = _selection_md(table, [7, 8])  # headed by the worlds' seeds
    assert "| model | seed 7 | seed 8 |" in md and "| LinFAC+IBO | 3/4/9/0 | 3/4/9/1 |" in md
    none = correction_table([seed(0, 0)])
    assert none["linfac+ibo"]["gap_closed"]["mean"] == 0.0  # nothing kept on validation: the impure model
    assert none["linfac+ibo"]["harmful_score"]["mean"] == 0.5
    assert "ci" not in gap  # the seeds measured no interval: none is made up

    def with_ci(k: int, kept_step: int) -> dict:  # each seed's interval on the harmful score
        out = seed(k, kept_step)
        for row in out["rows"].values():
            row["harmful_score_ci"] = [row["harmful_score"] - 0.05, row["harmful_score"] + 0.05]
        return out

    one = correction_table([with_ci(0, 20)])["linfac+ibo"]["harmful_score"]
    assert one["ci"] == pytest.approx([0.25, 0.35]) and one["ci_by_seed"] == [one["ci"]]  # one seed: its own
    two = correction_table([with_ci(0, 20), with_ci(1, 30)])["linfac+ibo"]["harmful_score"]
    scores = [0.3, 0.19]  # steps 20 and 30; several seeds: Student-t over them, t(0.975, 1 df) = 12.706
    half = 12.7062047 * abs(scores[0] - scores[1]) / math.sqrt(2) / math.sqrt(2)
    assert two["ci"] == pytest.approx([sum(scores) / 2 - half, sum(scores) / 2 + half], rel=1e-6)
    assert two["ci_by_seed"] == [pytest.approx([0.25, 0.35]), pytest.approx([0.14, 0.24])]
    from lancet_ds.bench.table import _mean_std
    assert _mean_std(one) == "0.300 [0.250, 0.350]" and _mean_std(two).startswith("0.245 ± 0.055 [")
    per_seed = [{"world": {"seed": k}, "candidates": 10, "labelled_positive": 3, "precision_at_k": {},
                 "pr_auc": {"linfac": 0.8 + 0.1 * k, "tfidf": 0.4},
                 "pr_auc_by_category": {"candidates": {"a": 10}, "labelled_positive": {"a": 3}, "linfac": {"a": 0.5 + k * 0.2},
                                        "tfidf": {"a": 0.4}},
                 "top_k_by_kind": {"k": 3, "candidates": {"contaminated_x": 3, "twin": 7},
                                   "linfac": {"contaminated_x": 1.0 - k / 3, "twin": k / 7}},
                 "counterfactual": {"k": 3, "impure": -1.0, "safe": -5.0, "impure_heldout_harm": 0.3,
                                    "safe_heldout_harm": 0.0, "removed_by": ["linfac"],
                                    "linfac": {"change_vs_impure": -1.0 - k, "query_logprob_per_token": -2.0 - k,
                                               "heldout_gap_removed": 0.4 + 0.2 * k,
                                               "heldout_gap_removed_ci": [0.3 + 0.2 * k, 0.5 + 0.2 * k]},
                                    "heldout_lead": {"of": "linfac", "over": {"tfidf": {"share": 0.1 * k,
                                                                                        "share_ci": [-0.1, 0.2]}}},
                                    "by_kind": {"contaminated_x": {"without": {"left_out": 3, "query_logprob_per_token": -3.0,
                                                                               "heldout_harm": 0.1,
                                                                               "behaviour_removed": 0.5 + 0.2 * k}}}},
                 "correction": seed(k, 30)} for k in range(2)]
    q = over_seeds(per_seed)
    assert q["pr_auc"]["linfac"] == pytest.approx(0.85) and q["pr_auc_std"]["linfac"] == pytest.approx(0.05)
    assert q["pr_auc_by_category"]["linfac"]["a"] == pytest.approx(0.6) and q["pr_auc_by_category"]["candidates"]["a"] == 20
    assert q["counterfactual"]["linfac"]["change_vs_impure"] == pytest.approx(-1.5)
    assert q["counterfactual"]["removed_by"] == ["linfac"]
    assert q["counterfactual"]["linfac"]["change_vs_impure_std"] == 0.5
    # a held-out share's interval is one seed's: with two the mean is kept and each interval stays in by_seed
    assert q["counterfactual"]["linfac"]["heldout_gap_removed"] == pytest.approx(0.5)
    assert "heldout_gap_removed_ci" not in q["counterfactual"]["linfac"]
    assert q["counterfactual"]["heldout_lead"] == {"of": "linfac", "over": {"tfidf": {"share": pytest.approx(0.05)}}}
    assert q["by_seed"][1]["counterfactual"]["linfac"]["heldout_gap_removed_ci"] == [0.5, 0.7]
    one = over_seeds(per_seed[:1])["counterfactual"]
    assert one["linfac"]["heldout_gap_removed_ci"] == [0.3, 0.5] and one["heldout_lead"]["over"]["tfidf"]["share_ci"] == [-0.1, 0.2]
    assert q["top_k_by_kind"]["candidates"] == {"contaminated_x": 6, "twin": 14} and q["top_k_by_kind"]["k"] == 6
    assert q["top_k_by_kind"]["linfac"]["contaminated_x"] == pytest.approx(5 / 6)
    without = q["counterfactual"]["by_kind"]["contaminated_x"]["without"]
    assert without["behaviour_removed"] == pytest.approx(0.6) and without["behaviour_removed_std"] == pytest.approx(0.1)
    assert without["left_out"] == 3
    from lancet_ds.bench.table import _kind_counterfactual_md, _top_k_by_kind_md

    md = "\n".join(_top_k_by_kind_md(q["top_k_by_kind"], ["linfac", "tfidf"]) + _kind_counterfactual_md(
        q["counterfactual"]["by_kind"]))
    assert "| recall | contaminated_x (6) | twin (14) |" in md and "| linfac | 0.833 | 0.0714 |" in md
    assert "| contaminated_x | without | 3 | -3 | removed 0.6 ± 0.1 | 0.1 |" in md
    assert q["world"]["seeds"] == [0, 1] and len(q["by_seed"]) == 2


def test_method_counterfactuals_come_with_a_reseeded_retrain_of_the_whole_corpus():
    """`bench.counterfactual.by_method` on a stand-in retrainer: each method's top k left out under the world's
    seed, then the control, every sample kept under another seed; no methods, no retrains."""
    from lancet_ds.bench.counterfactual import RESEED_OFFSET, RESEEDED, by_method

    class Sample:
        def __init__(self, i):
            self.id = f"t{i}"

    impure = [[0.9, 0.5], [0.6, 0.6], [0.4, 0.8], [0.7, 0.5]]  # the held-out costs: 4 prompts, 2 answers each

    class StandIn:  # the query log-prob falls by 1 per sample left out, and by 0.25 under another seed; every
        # held-out answer's cost by 0.1 per labelled positive (t0, t1) left out
        reference, seed = {"impure": -1.0, "safe": -4.0, "impure_heldout_harm": 0.625, "safe_heldout_harm": 0.1}, 7
        train_set = [Sample(i) for i in range(6)]

        def __init__(self):
            self.seen, self.heldout_costs = {}, {"impure": impure, "safe": [[0.1, 0.1]] * 4}

        def retrain(self, name, keep, seed=None):
            out = [s.id for s in self.train_set if not keep(s)]
            self.seen[name] = (out, seed)
            drop = 0.1 * len({"t0", "t1"} & set(out))
            self.heldout_costs[name] = [[c - drop for c in prompt] for prompt in impure]
            return {"query_logprob_per_token": -1.0 - len(out) - 0.25 * (seed != 7), "heldout_harm": 0.5}, len(out)

    order = {"linfac": ["t0", "t1", "t5", "t2"], "tfidf": ["t3", "t4", "t0", "t1"]}
    stand_in = StandIn()
    result = by_method(stand_in, order, {"t0", "t1"}, ("linfac", "tfidf"))
    assert stand_in.seen == {"without_linfac": (["t0", "t1"], 7), "without_tfidf": (["t3", "t4"], 7),
                             "reseeded": ([], 7 + RESEED_OFFSET)}
    assert result["removed_by"] == ["linfac", "tfidf", RESEEDED]
    assert result["linfac"]["contaminated_removed"] == 2 and result["tfidf"]["contaminated_removed"] == 0
    assert result[RESEEDED] == {"query_logprob_per_token": -1.25, "heldout_harm": 0.5,
                                           "change_vs_impure": -0.25, "contaminated_removed": 0}
    # LinFAC's removal lowered every held-out answer's cost by 0.2 and TF-IDF's and the reseed's by nothing: paired over
    # the prompts, its lead is 0.2 / (0.625 − 0.1) in every resample, so the interval is that one point
    lead = result["heldout_lead"]
    assert lead["of"] == "linfac" and set(lead["over"]) == {"tfidf", RESEEDED}
    for m in ("tfidf", RESEEDED):
        assert lead["over"][m]["share"] == pytest.approx(0.2 / 0.525)
        assert lead["over"][m]["share_ci"] == pytest.approx([0.2 / 0.525, 0.2 / 0.525])
    empty = by_method(StandIn(), order, {"t0"}, ())
    assert empty["removed_by"] == [] and "heldout_lead" not in empty


def test_a_removal_share_of_the_heldout_harm_gap_and_its_paired_lead_match_brute_force():
    """`counterfactual.heldout_share` and `heldout_lead` against figures computed here from the costs themselves:
    the share is (impure − model) / (impure − safe) on the mean cost; the lead's interval resamples the prompts of
    both removals together, so it is narrower than one that resamples them apart, and covers the estimate."""
    import numpy as np
    from lancet_ds.bench.counterfactual import heldout_lead, heldout_share

    rng = np.random.default_rng(3)
    difficulty = rng.uniform(0.0, 1.0, size=(40, 1))  # what the prompts share: the pairing cancels it
    impure = np.clip(difficulty + rng.normal(0.3, 0.05, (40, 3)), 0, None)
    safe = np.clip(0.1 * difficulty + rng.normal(0.02, 0.01, (40, 3)), 0, None)
    first = np.clip(0.4 * difficulty + rng.normal(0.05, 0.05, (40, 3)), 0, None)
    other = np.clip(0.6 * difficulty + rng.normal(0.1, 0.05, (40, 3)), 0, None)
    gap = impure.mean() - safe.mean()
    share = heldout_share(impure.tolist(), safe.tolist(), first.tolist())
    assert share["heldout_gap_removed"] == pytest.approx((impure.mean() - first.mean()) / gap)
    low, high = share["heldout_gap_removed_ci"]
    assert low < share["heldout_gap_removed"] < high
    lead = heldout_lead(impure.tolist(), safe.tolist(), first.tolist(), other.tolist())
    assert lead["share"] == pytest.approx((other.mean() - first.mean()) / gap)
    assert lead["share_ci"][0] < lead["share"] < lead["share_ci"][1]
    draws = rng.integers(0, 40, size=(1000, 40)), rng.integers(0, 40, size=(1000, 40))  # apart: two draws of prompts
    unpaired = (other[draws[0]].mean(axis=(1, 2)) - first[draws[1]].mean(axis=(1, 2))) / gap
    assert lead["share_ci"][1] - lead["share_ci"][0] < 0.5 * (np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5))
    assert heldout_lead(impure.tolist(), impure.tolist(), first.tolist(), other.tolist()) == {"share": None, "share_ci": None}


def test_kind_counterfactuals_leave_out_the_kind_or_every_other_contamination(tmp_path):
    """`bench.counterfactual.by_kind` on a stand-in retrainer: `without` leaves out exactly the kind's samples,
    `only` every other contaminated sample; the shares of the impure → safe query log-prob gap follow."""
    from conftest import write_jsonl
    from lancet_ds.bench.counterfactual import CONTROL, by_kind

    kinds = ["contaminated_a"] * 2 + ["contaminated_b"] * 3 + ["twin"] * 5
    write_jsonl(tmp_path / "train.jsonl", [{"id": f"t{i}", "kind": k} for i, k in enumerate(kinds)])

    class Sample:
        def __init__(self, i):
            self.id = f"t{i}"

    class StandIn:  # the query log-prob falls by 1 per contaminated_a sample left out, 0.5 per contaminated_b, 0 per twin
        world, reference, seed = tmp_path, {"impure": -1.0, "safe": -4.0}, 0
        train_set = [Sample(i) for i in range(len(kinds))]
        seen: dict = {}

        def retrain(self, name, keep):
            out = [s.id for s in self.train_set if not keep(s)]
            self.seen[name] = out
            lp = -1.0 - sum({"contaminated_a": 1.0, "contaminated_b": 0.5}.get(kinds[int(i[1:])], 0.0) for i in out)
            return {"query_logprob_per_token": lp, "heldout_harm": 0.0}, len(out)

    stand_in = StandIn()
    result = by_kind(stand_in, ("without", "only"))
    assert sorted(result) == ["contaminated_a", "contaminated_b", CONTROL]
    assert stand_in.seen["without_contaminated_a"] == ["t0", "t1"]
    assert stand_in.seen["only_contaminated_a"] == ["t2", "t3", "t4"]
    assert result["contaminated_a"]["without"]["behaviour_removed"] == pytest.approx(2.0 / 3.0)
    assert result["contaminated_a"]["only"]["behaviour_alone"] == pytest.approx((-2.5 + 4.0) / 3.0)
    assert result["contaminated_b"]["without"]["left_out"] == 3
    control = stand_in.seen["without_random_clean"]  # as many clean samples as the largest kind, chosen at random
    assert len(control) == 3 and all(kinds[int(i[1:])] == "twin" for i in control)
    assert result[CONTROL] == {"without": {"query_logprob_per_token": -1.0, "heldout_harm": 0.0, "left_out": 3,
                                           "behaviour_removed": 0.0}}
    assert by_kind(stand_in, ()) == {} and len(stand_in.seen) == 5  # no modes (the quick preset): no retrains
    assert CONTROL not in by_kind(stand_in, ("only",))  # the control is a removal: `without` only
    with pytest.raises(ValueError, match="kind modes \\['with'\\] unknown"):
        by_kind(stand_in, ("with",))


def test_a_one_gpu_node_measures_scale_on_the_ranks_it_can_start(tmp_path, monkeypatch):
    """`deepspeed --num_gpus 4` on a node with one GPU starts ranks that find no device: there the scale bench
    measures 1 rank (its budget-partitioned run too, on that rank), launches nothing larger, and says what it
    left out in bench.json and bench.md. The node is simulated (`launchable_ranks`); the runs are real."""
    from dataclasses import replace

    from lancet_ds.bench import run, table

    launched = []
    start = run._worker

    def worker(task, spec, work, name, ranks=1):
        launched.append(ranks)
        return start(task, spec, work, name, ranks)

    monkeypatch.setattr(run, "launchable_ranks", lambda: 1)
    monkeypatch.setattr(run, "_worker", worker)
    scale = run.scale(replace(run.SIZES["quick"], scale_layers=2), str(REPO / "ds_configs" / "zero3.json"), tmp_path)
    assert launched == [1, 1] and scale["ranks"] == [1] and set(scale["runs"]) == {"w64-1r", "w64-1r-partitioned"}
    assert scale["runs"]["w64-1r-partitioned"]["predicted"]["score"]["partitions"] >= 2
    assert scale["plan_rel_error_max"] <= 0.2 and scale["scores_max_rel_diff"] < 1e-4
    assert not any(key.endswith("_over_1r") for key in scale)  # no ratio without a second world size
    assert scale["not_measured"] == "world sizes [4]: this node starts at most 1 rank(s), one per GPU"
    assert f"Not measured: {scale['not_measured']}." in table.scale_md(scale)


def test_every_correction_has_a_row_and_its_variant_is_a_valid_correct_stage():
    """The full preset's corrections: each has a place and a display name in the table (`ROW_ORDER`), and a method
    variant (`METHOD_VARIANTS`: IBO with the paper's printed L_COR, or with the Pareto selection) is `correct
    --method ibo` with that one option changed, which the stage's own option checks accept."""
    from lancet_ds.bench.quality import ROW_ORDER, row_name
    from lancet_ds.bench.sizes import CORRECTIONS, METHOD_VARIANTS, SIZES
    from lancet_ds.ibo.correct import CorrectArgs

    assert SIZES["full"].corrections == CORRECTIONS and set(SIZES["quick"].corrections) <= set(CORRECTIONS)
    assert len({row_name(c) for c in CORRECTIONS}) == len(CORRECTIONS)
    assert ROW_ORDER == ("impure", "safe", *CORRECTIONS)  # each row under its own key of quality.correction,
    assert not set(ROW_ORDER) & {"order", "labels", "curves", "reference", "judges", "guard", "steps", "strength_steps",
                                 "seeds"}  # beside the table's own keys
    assert {"linfac+ibo_paper", "linfac+ibo_pareto"} <= set(CORRECTIONS)
    for method, options in METHOD_VARIANTS.values():
        args = CorrectArgs(method=method, **options)
        assert args.validate() == [] and args.method == "ibo" and all(getattr(args, k) == v for k, v in options.items())
    assert CorrectArgs(**METHOD_VARIANTS["ibo_paper"][1]).cor_form == "paper"
    assert CorrectArgs(**METHOD_VARIANTS["ibo_pareto"][1]).selection == "pareto"
