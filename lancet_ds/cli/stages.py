"""The stage commands (fit, queries, recall, score, correct, export, evaluate) and the inspection groups:
each a thin call into its stage function, its stage options generated from the stage's dataclass."""

from __future__ import annotations

import click

from lancet_ds.cli.common import (data_options, data_or_recorded, data_spec, ds_config_option, locked, model_option,
                                  model_or_fitted, overwrite_option, run_option)
from lancet_ds.data.spec import DataSpec
from lancet_ds.evaluation.evaluate import EvalArgs
from lancet_ds.export import ExportArgs
from lancet_ds.ibo.correct import CorrectArgs
from lancet_ds.influence.fit import FitArgs
from lancet_ds.influence.queries import QueriesArgs
from lancet_ds.influence.score import ScoreArgs
from lancet_ds.options import click_options, from_click
from lancet_ds.recall.stage import RecallArgs
from lancet_ds.run_dir import STAGE_RECORD, RunDir


@click.command("fit")
@click.option("--model", "model_dir", type=click.Path(), required=True, help="Model directory (save_pretrained).")
@click.option("--data", "data_path", type=click.Path(), required=True, help="Training corpus to draw the fitting set from.")
@click.option("--out", "run_dir", type=click.Path(), required=True, help="Run directory; factors go to RUN_DIR/factors/.")
@click_options(FitArgs, rename={"sublayer_patterns": "--sublayer"})
@data_options
@ds_config_option
@overwrite_option
def fit_cmd(model_dir, data_path, run_dir, ds_config, overwrite, **kw):
    """Fit LinFAC (or EK-FAC) factors on a ZeRO-3-sharded model and store them as safetensors."""
    from lancet_ds.influence.fit import fit_factors

    corpus = data_spec(data_path, kw)
    with locked(run_dir):
        fit_factors(run_dir, corpus, from_click(FitArgs, kw), model_dir, ds_config, overwrite)


@click.group()
def factors():
    """Look at fitted factors."""


@factors.command("inspect")
@click.argument("run_dir", type=click.Path())
def factors_inspect(run_dir):
    """Per sublayer: shapes, counts, eigenvalue range, condition number, and the damping to be used."""
    from lancet_ds.console import console
    from lancet_ds.influence.inspect import factor_table

    console().print(factor_table(run_dir))


@click.command("queries")
@run_option
@click.option("--queries", "queries_path", type=click.Path(), required=True,
              help="Influence queries: prompts with the undesirable responses.")
@click_options(QueriesArgs)
@data_options
@model_option
@ds_config_option
@overwrite_option
def queries_cmd(run_dir, queries_path, model_dir, ds_config, overwrite, **kw):
    """Query gradients on the sharded model, k-means batches, and per-batch IHVPs (Eq. 12–13)."""
    from lancet_ds.influence.queries import run_queries

    run = RunDir.of(run_dir)
    queries = data_spec(queries_path, kw)
    with locked(run):
        run_queries(run, queries, from_click(QueriesArgs, kw), model_or_fitted(run, model_dir), ds_config, overwrite)


@click.command("recall")
@run_option
@click.option("--data", "data_path", type=click.Path(), required=True, help="Training corpus.")
@click.option("--queries", "queries_path", type=click.Path(), default=None,
              help="Influence queries, generic schema (default: those the run's queries stage read).")
@click_options(RecallArgs)
@data_options
@overwrite_option
def recall_cmd(run_dir, data_path, queries_path, overwrite, **kw):
    """Streaming TF-IDF top-k recall of training samples per query (scikit-learn's weighting)."""
    from lancet_ds.recall.stage import run_recall

    run, corpus = RunDir.of(run_dir), data_spec(data_path, kw)
    args = from_click(RecallArgs, kw)
    queries = DataSpec(path=queries_path) if queries_path or args.score_all else \
        data_or_recorded(run, run.queries, "queries", None, {}, "--queries")
    with locked(run):
        run_recall(run, corpus, queries, args, overwrite)


@click.command("score")
@run_option
@click.option("--data", "data_path", type=click.Path(), required=True, help="Training corpus.")
@click_options(ScoreArgs)
@data_options
@model_option
@ds_config_option
@overwrite_option
def score_cmd(run_dir, data_path, model_dir, ds_config, overwrite, **kw):
    """Influence of every candidate on every query batch (Eq. 9), resumable."""
    from lancet_ds.influence.score import run_scores

    run, corpus = RunDir.of(run_dir), data_spec(data_path, kw)
    with locked(run):
        run_scores(run, corpus, from_click(ScoreArgs, kw), model_or_fitted(run, model_dir), ds_config, overwrite)


@click.group()
def scores():
    """Look at influence scores."""


@scores.command("top")
@click.argument("run_dir", type=click.Path())
@click.option("-n", "n", type=int, default=20, show_default=True, help="Samples on each side.")
def scores_top(run_dir, n):
    """The most positive and most negative samples with their text (the paper's Table 8): by their rise and their
    fall over the query batches, the total beside them."""
    from lancet_ds.console import console
    from lancet_ds.influence.top import top_tables

    for table in top_tables(run_dir, n):
        console().print(table)


@click.command("correct")
@run_option
@click.option("--data", "data_path", type=click.Path(), default=None,
              help="Training corpus for the replay sample (default: the corpus the run's scores were made on).")
@click_options(CorrectArgs)
@data_options
@model_option
@ds_config_option
@overwrite_option
def correct_cmd(run_dir, data_path, model_dir, ds_config, overwrite, **kw):
    """Post-train the model with IBO (or the PBO / GA / LLM-UL / SFT-ER / DPO-ER baselines) on its influential samples."""
    from lancet_ds.ibo.correct import run_correct

    run, args = RunDir.of(run_dir), from_click(CorrectArgs, kw)
    corpus = data_or_recorded(run, run.scores, "corpus", data_path, kw, "--data")
    with locked(run):
        run_correct(run, args, corpus, model_or_fitted(run, model_dir), ds_config, overwrite)


@click.command("export")
@run_option
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Where the Hugging Face checkpoint goes.")
@click_options(ExportArgs)
@click.option("--overwrite", is_flag=True, help="Replace OUT even when it holds something other than an earlier "
                                                  "export of this run.")
@click.option("--model", "model_dir", type=click.Path(), default=None,
              help="The model the correction started from, where it lies now (default: where the correction read it).")
@click.option("--queries", "queries_path", type=click.Path(), default=None,
              help="The influence queries the model card lists (default: those the run's queries stage read).")
def export_cmd(run_dir, out_dir, overwrite, model_dir, queries_path, **kw):
    """Write the corrected model as a Hugging Face checkpoint (sharded safetensors) with a model card."""
    from lancet_ds.export import run_export

    run = RunDir.of(run_dir)
    queries = data_or_recorded(run, run.queries, "queries", queries_path, {}, "--queries") \
        if queries_path or (run.queries / STAGE_RECORD).exists() else None
    with locked(run):
        run_export(run, out_dir, from_click(ExportArgs, kw), queries, overwrite, model_dir=model_dir)


@click.command("evaluate")
@run_option
@click_options(EvalArgs)
@model_option
@ds_config_option
@overwrite_option
def evaluate_cmd(run_dir, model_dir, ds_config, overwrite, **kw):
    """Impure vs corrected (and others): query log-prob, clean perplexity, harmful rate, diversity."""
    from lancet_ds import distributed as dist_utils
    from lancet_ds.console import console
    from lancet_ds.evaluation.evaluate import eval_table, run_evaluate

    run, args = RunDir.of(run_dir), from_click(EvalArgs, kw)
    with locked(run):
        rows = run_evaluate(run, args, model_or_fitted(run, model_dir), ds_config, overwrite)
    if dist_utils.is_main():
        console().print(eval_table(rows))


STAGE_COMMANDS = {"fit": fit_cmd, "queries": queries_cmd, "recall": recall_cmd, "score": score_cmd,
                  "correct": correct_cmd, "export": export_cmd, "evaluate": evaluate_cmd}
"""Stage name → its command; each command's stage options are generated from `job.spec.STAGE_OPTIONS`."""

