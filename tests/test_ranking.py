"""The scores' ranking (`influence.ranking`): a candidate's rise and fall over the query batches against a brute
force on every row, the orders `scores top` and the report show, and the recall PR-AUC the report grades by the
rise with Eq. 13's total beside it, on a run directory laid out as the stages write it."""

from __future__ import annotations

import json
import random

import pytest
from sklearn.metrics import average_precision_score

from lancet_ds.errors import ConfigError
from lancet_ds.fileio import write_json, write_jsonl
from lancet_ds.influence.ranking import most_negative, most_positive, rise_and_fall, scored_rows
from lancet_ds.report.quality import labelled_scores, recall_quality
from lancet_ds.run_dir import RunDir

SIZES = [3, 1, 4]


def _run(tmp_path, per_batch: dict[str, list[float]], culprits: set[str]) -> RunDir:
    """A run with `queries/batches.json` (sizes SIZES) and `scores/scores.jsonl` as `score` writes them, less the
    rise and fall (as a run scored before they existed)."""
    run = RunDir(tmp_path / "run")
    run.batches.parent.mkdir(parents=True)
    write_json(run.batches, {"batches": [{"batch": b, "size": s, "query_ids": [f"q{b}.{i}" for i in range(s)]}
                                         for b, s in enumerate(SIZES)]})
    run.score_rows.parent.mkdir(parents=True)
    write_jsonl(run.score_rows, [{"id": i, "prompt": "p", "response": "r", "meta": {"contaminated": i in culprits},
                                  **{f"score_{b}": v for b, v in enumerate(vs)},
                                  "score": sum(s * v for s, v in zip(SIZES, vs))} for i, vs in per_batch.items()])
    return run


def test_rise_and_fall_split_the_total_by_sign_on_every_row(tmp_path):
    rng = random.Random(0)
    per_batch = {f"s{k:02d}": [rng.gauss(0, 1) for _ in SIZES] for k in range(40)}
    rows = scored_rows(_run(tmp_path, per_batch, set()))
    for r in rows:
        weighted = [s * v for s, v in zip(SIZES, per_batch[r["id"]])]
        assert r["rise"] == pytest.approx(sum(max(w, 0.0) for w in weighted), abs=1e-12)
        assert r["fall"] == pytest.approx(sum(min(w, 0.0) for w in weighted), abs=1e-12)
        assert r["rise"] + r["fall"] == pytest.approx(r["score"], abs=1e-12)
    assert [r["id"] for r in most_positive(rows)] == sorted(per_batch, key=lambda i: -next(
        x["rise"] for x in rows if x["id"] == i))
    assert [r["id"] for r in most_negative(rows)][0] == min(rows, key=lambda r: r["fall"])["id"]
    assert rise_and_fall([1.0, -2.0], [2.0, 1.0]) == (2.0, -2.0)
    with pytest.raises(ValueError):  # a row with another number of batches than the run's
        rise_and_fall([1.0], [1.0, 2.0])


def test_a_culprit_that_lowers_another_batch_ranks_by_its_rise(tmp_path):
    """The case the ranking is for: a culprit raises its own batch's behaviour a lot and lowers another's, so its
    total is below a clean sample's that raises a little everywhere; by the rise it ranks first."""
    per_batch = {"culprit": [2.0, 0.0, -1.5], "clean_even": [0.3, 0.3, 0.3], "clean_low": [-0.1, 0.1, -0.2],
                 "culprit2": [0.0, 1.0, 0.2]}
    run = _run(tmp_path, per_batch, {"culprit", "culprit2"})
    rows = scored_rows(run)
    by_total = sorted(rows, key=lambda r: -r["score"])
    assert by_total[0]["id"] == "clean_even"  # total: culprit 6 − 6 = 0 < clean_even 2.4
    assert [r["id"] for r in most_positive(rows)][:2] == ["culprit", "clean_even"]  # rise 6 against 2.4
    assert [r["id"] for r in most_negative(rows)][0] == "culprit"  # and its fall is the largest too
    ids, y, ranked = labelled_scores(run)
    assert ranked == [r["rise"] for r in rows] and y == [i in {"culprit", "culprit2"} for i in ids]
    pr = recall_quality(run)
    assert pr["influence"] == pytest.approx(average_precision_score(y, [r["rise"] for r in rows]))
    assert pr["influence_total"] == pytest.approx(average_precision_score(y, [r["score"] for r in rows]))
    assert pr["influence"] > pr["influence_total"]


def test_labels_that_are_not_true_or_false_are_left_out_not_counted_true(tmp_path):
    """A string "false" is true to Python: every candidate counted as a culprit in the composition and the plot. Such
    labels are left out (job validation refuses them in the records it scans); 1.0 / 0.0 are labels."""
    from lancet_ds.data.records import is_label
    from lancet_ds.fileio import read_jsonl
    from lancet_ds.report.quality import composition

    per_batch = {"culprit": [2.0, 0.0, -1.5], "clean": [0.3, 0.3, 0.3], "other": [-0.1, 0.1, -0.2]}
    run = _run(tmp_path, per_batch, {"culprit"})
    write_jsonl(run.selection, [{"id": "culprit", "role": "positive", "batch": 0, "score": 2.0},
                                {"id": "clean", "role": "neutral", "batch": None, "score": None}])
    assert labelled_scores(run) is not None and composition(run, "contaminated")["positive"]["labelled_positive"] == 1
    rows = [{**r, "meta": {"contaminated": str(r["meta"]["contaminated"]).lower()}} for r in read_jsonl(run.score_rows)]
    write_jsonl(run.score_rows, rows)
    assert labelled_scores(run) is None and composition(run, "contaminated") is None
    assert [is_label(v) for v in (True, False, 1, 0, 1.0, 0.0, "false", "true", 2, None, 0.5)] == [True] * 6 + [False] * 5


def test_scores_without_the_query_batches_say_which_stage_to_run(tmp_path):
    run = _run(tmp_path, {"a": [1.0, 0.0, 0.0]}, set())
    run.batches.unlink()
    with pytest.raises(ConfigError, match=r"batches\.json: missing.*lancet-ds queries --run"):
        scored_rows(run)
    with pytest.raises(ConfigError, match=r"scores\.jsonl: missing.*lancet-ds score --run"):
        scored_rows(RunDir(tmp_path / "elsewhere"))


def test_scores_top_and_the_report_show_the_rise_and_the_fall(tmp_path):
    from lancet_ds.influence.top import top_sides
    from lancet_ds.report.summary import _top

    run = _run(tmp_path, {"culprit": [2.0, 0.0, -1.5], "clean_even": [0.3, 0.3, 0.3], "other": [-0.5, 0.0, 0.0]},
               set())
    sides = top_sides(run.root, 2)
    assert [r["id"] for r in sides["positive"]] == ["culprit", "clean_even"]
    assert [r["id"] for r in sides["negative"]] == ["culprit", "other"]
    top = _top(run)
    assert top["positive"][0]["rise"] == pytest.approx(6.0) and top["positive"][0]["score"] == pytest.approx(0.0)
    assert top["negative"][0]["fall"] == pytest.approx(-6.0)
    assert json.loads(json.dumps(top))  # report.json holds it as is
