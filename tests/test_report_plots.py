"""The report's validation plot draws what the checkpoint choice and the utility guard act on
(`report.plots._validation`): the criterion per validated step, the chosen step, the clean perplexity ratio to
step 0, its one-sided upper bound (what the guard reads) and the limit 1 + `max_ppl_increase`; and report.md's
sentence on the selection names what kept samples out of D⁺ and D⁻, and report.json's recall PR-AUC the ranking
that made the scores."""

from __future__ import annotations

import matplotlib
import pytest

from lancet_ds.fileio import write_json, write_jsonl
from lancet_ds.report import plots
from lancet_ds.run_dir import RunDir

matplotlib.use("Agg")


def _lines(fig) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for ax in fig.axes for line in ax.lines}


def _draw(tmp_path, monkeypatch, rows: list[dict], best: dict):
    """`_validation` on a correct stage's log `rows` and summary `best`: (the path it names, the figure)."""
    run = RunDir(tmp_path / "run")
    run.correct.mkdir(parents=True)
    write_jsonl(run.correct_log, rows)
    write_json(run.correct_summary, {"best": best})
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    path = plots._validation(run, tmp_path)
    return path, figures[0]


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """A correct stage's log and summary as `ibo.recipe` writes them (steps 0, 11, 22, 33; the guard refuses
    11 and 22 by their upper bound though 22's point ratio is within the limit; 33 is chosen)."""
    base = 10.0
    points = {0: (0.40, 1.0, 1.0), 11: (0.20, 1.099, 1.149), 22: (0.15, 1.039, 1.067), 33: (0.18, 1.020, 1.048)}
    rows = [{"step": s, "criterion": "harm", "value": v, "clean_perplexity": base * r, "clean_ppl_ratio": r,
             "clean_ppl_ratio_upper": u} for s, (v, r, u) in points.items()]
    best = {**rows[-1], "ppl_limit": base * 1.05}
    rows.insert(2, {"step": 12, "loss": 0.5})  # a training row: not a validation
    return (*_draw(tmp_path, monkeypatch, rows, best), points)


def test_validation_plot_draws_the_guard_as_it_acts(drawn):
    path, fig, points = drawn
    assert path.name == "validation.png"
    lines = _lines(fig)
    steps = list(points)
    assert lines["validation harm"] == (steps, [v for v, _, _ in points.values()])
    assert lines["clean perplexity / step 0's"] == (steps, [r for _, r, _ in points.values()])
    assert lines["its upper bound (the guard reads this)"] == (steps, [u for _, _, u in points.values()])
    assert lines["guard's limit"][1] == [pytest.approx(1.05)] * 2
    assert lines["chosen: step 33"][0] == [33, 33]
    # what the plot shows is the guard's decision: bound over the limit at 11 and 22, under at 33
    upper = dict(zip(steps, lines["its upper bound (the guard reads this)"][1]))
    assert upper[11] > 1.05 and upper[22] > 1.05 >= upper[33] and points[22][1] < 1.05


def test_validation_plot_without_a_guard_level_draws_no_bound(tmp_path, monkeypatch):
    rows = [{"step": s, "criterion": "harm", "value": 0.1, "clean_perplexity": 2.0, "clean_ppl_ratio": 1.0}
            for s in (0, 5)]
    _, fig = _draw(tmp_path, monkeypatch, rows, {"step": 5})
    lines = _lines(fig)
    assert "clean perplexity / step 0's" in lines and "its upper bound (the guard reads this)" not in lines
    assert "guard's limit" not in lines  # no limit recorded in the summary


def test_the_report_says_what_kept_samples_out_of_d_minus():
    from lancet_ds.report.markdown import _selection_sentence

    sel = {"positive": 5, "negative": 4, "neutral": 9, "replay": 2, "influential_both_ways": 1,
           "barred_from_negative": 3, "unflagged_from_positive": 2, "barred_by": "positive judge's flags"}
    text = _selection_sentence(sel, {"method": "ibo", "steps": 10, "best": {"step": 4}})
    assert text.startswith("5 positive, 4 negative, 9 neutral + 2 replay samples; ibo for 10 steps, best checkpoint: 4.")
    assert "3 were kept out of D⁻ by the positive judge's flags." in text
    assert "2 were kept out of D⁺: the positive judge does not flag them as harmful." in text
    older = {k: v for k, v in sel.items() if k != "barred_by"}  # a summary from before `barred_by`: the ceiling
    assert "3 were kept out of D⁻ by the negative ceiling." in _selection_sentence(older, {"method": "ibo", "steps": 1})
    assert "D⁻" not in _selection_sentence({**sel, "barred_from_negative": 0}, {"method": "ibo", "steps": 1})
    assert "likelihood" not in text  # `neutral_likelihood` off: no count in the summary
    liked = _selection_sentence({**sel, "neutral_likely": 7}, {"method": "ibo", "steps": 1})
    assert liked.endswith("also raised the likelihood of the 7 neutral samples the positive judge passes "
                          "(`neutral_likelihood`).")


def test_recall_pr_auc_names_the_ranking_that_made_the_scores(tmp_path):
    """report.json's `recall_pr_auc`: the scores' PR-AUC under the fit's method, or `tfidf_scores` when `score
    --by tfidf` made them (the paper's TF-IDF recall for GA and PBO), never under a method that did not rank."""
    from types import SimpleNamespace

    from sklearn.metrics import average_precision_score

    from lancet_ds.report.summary import _recall

    run = RunDir(tmp_path / "run")
    rows = [{"id": f"s{i}", "score_0": s, "score": s, "meta": {"contaminated": c}}
            for i, (s, c) in enumerate([(0.9, True), (0.8, False), (0.5, True), (0.1, False)])]
    write_jsonl(run.score_rows, rows)
    write_json(run.batches, {"batches": [{"batch": 0, "size": 1}]})
    expected = average_precision_score([True, False, True, False], [0.9, 0.8, 0.5, 0.1])

    def spec(by: str):
        return SimpleNamespace(corpus=SimpleNamespace(label_field="contaminated"), compare_ekfac=False,
                               stages={"fit": SimpleNamespace(method="linfac"), "score": SimpleNamespace(by=by)})

    influence = _recall(run, spec("influence"))
    assert influence["linfac"] == influence["influence"] == pytest.approx(expected) and "tfidf_scores" not in influence
    assert influence["linfac_total"] == pytest.approx(expected)  # one batch: the rise is the total
    tfidf = _recall(run, spec("tfidf"))
    assert tfidf["tfidf_scores"] == pytest.approx(expected) and "linfac" not in tfidf and tfidf["random"] == 0.5
