"""The `lancet-ds` command line: one click group, each subcommand a thin call into the library.

Every subcommand runs as a plain process (one rank) and under the DeepSpeed launcher
(`deepspeed --num_gpus N --module lancet_ds <subcommand> ...`), which adds `--local_rank`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lancet_ds import __version__

from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError, LancetError
from lancet_ds.evaluation.evaluate import EvalArgs
from lancet_ds.export import ExportArgs
from lancet_ds.ibo.correct import CorrectArgs
from lancet_ds.influence.fit import FitArgs
from lancet_ds.influence.queries import QueriesArgs
from lancet_ds.influence.score import ScoreArgs
from lancet_ds.options import click_options, from_click
from lancet_ds.packaged import DEFAULT_DS_CONFIG
from lancet_ds.recall.stage import RecallArgs
from lancet_ds.run_dir import STAGE_RECORD, RunDir


def data_options(fn):
    """How to read a data set (corpus or queries): SchemaSpec's fields (`--schema` is its `name`) and
    DataSpec's `--split` and `--on-bad-record`, generated from those dataclasses."""
    fn = click_options(DataSpec, skip=("path", "schema"))(fn)
    return click_options(SchemaSpec, rename={"name": "--schema"})(fn)


def data_spec(path: str, kw: dict) -> DataSpec:
    """The DataSpec of `path` from the options `data_options` added (taken out of `kw`)."""
    schema = from_click(SchemaSpec, kw)
    rest = from_click(DataSpec, {**{k: kw.pop(k) for k in ("split", "on_bad_record")}, "path": path})
    return DataSpec(path=path, schema=schema, split=rest.split, on_bad_record=rest.on_bad_record)


def _recorded(run: RunDir, stage_dir: Path, key: str, what: str, flag: str):
    """A value an earlier stage of this run recorded (a command-line default, never a stage's input)."""
    record = stage_dir / STAGE_RECORD
    if not record.exists():
        raise ConfigError(f"{record}: missing, so {what} is unknown. Pass {flag}, or run that stage on {run} first.")
    from lancet_ds.fileio import read_json

    return read_json(record)["config"][key]


def model_or_fitted(run: RunDir, model_dir: str | None) -> str:
    """--model, else the model the run's factors were fitted on."""
    return model_dir or _recorded(run, run.factors, "model_dir", "the model", "--model")


def data_or_recorded(run: RunDir, stage_dir: Path, key: str, path: str | None, kw: dict, flag: str) -> DataSpec:
    """The data set named on the command line, else the one an earlier stage of the run read."""
    if path:
        return data_spec(path, kw)
    for name in ("name", "prompt_field", "response_field", "id_field", "hh_side", "pku_response", "split",
                 "on_bad_record"):
        kw.pop(name, None)
    recorded = _recorded(run, stage_dir, key, flag.lstrip("-"), flag)
    return DataSpec(**{**recorded, "schema": SchemaSpec(**recorded["schema"])})


run_option = click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory.")
model_option = click.option("--model", "model_dir", type=click.Path(), default=None,
                            help="Model directory (default: the model the run's factors were fitted on).")
ds_config_option = click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True,
                                 help="DeepSpeed JSON config.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace (or discard unfinished) results of this stage made with other options.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True,
              help="Set by the deepspeed launcher.")
@click.version_option(__version__, prog_name="lancet-ds")
def cli(local_rank):
    """LANCET under DeepSpeed ZeRO-3: find the training data behind a model's bad behaviour, and fix it."""


@cli.group()
def data():
    """Look at corpora the way the stages read them."""


@data.command("inspect")
@click.argument("path", type=click.Path())
@data_options
@click.option("--max-length", type=int, default=512, show_default=True,
              help="Tokens per sample after truncation (see the README's truncation policy).")
@click.option("--model", "model_dir", type=click.Path(), default=None,
              help="Model (or tokenizer) directory: adds token-length statistics and the truncation check.")
def data_inspect(path, model_dir, max_length, **kw):
    """Row counts, fields, token lengths and every bad record of PATH; exits 3 when the policy fails."""
    from lancet_ds.console import console
    from lancet_ds.data.inspect import inspect_corpus, print_report
    from lancet_ds.errors import EXIT_BAD_INPUT
    from lancet_ds.modeling import load_tokenizer

    data = data_spec(path, kw)
    tokenizer = load_tokenizer(model_dir) if model_dir else None
    report = inspect_corpus(path, data.schema, tokenizer, max_length, data.split)
    print_report(report, console())
    if report.rejects and data.on_bad_record == "fail":
        click.echo(f"{len(report.rejects)} bad record(s) under on_bad_record=fail: the stages would stop at "
                   f"{report.rejects[0]['location']}. Fix them or use --on-bad-record skip.", err=True)
        sys.exit(EXIT_BAD_INPUT)


@cli.command("train")
@click.option("--model", "model_dir", type=click.Path(), required=True, help="Model directory (save_pretrained).")
@click.option("--data", "data_path", type=click.Path(), required=True, help="Training corpus.")
@click.option("--out", "out_dir", type=click.Path(), required=True,
              help="Output directory: model/, checkpoints/, train_log.jsonl, summary.json.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config.")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-every", type=int, default=0, show_default=True, help="Checkpoint every N steps (resume point).")
@click.option("--lr", type=float, default=None, help="Override the config's learning rate.")
@click.option("--micro-batch", type=int, default=None, help="Override train_micro_batch_size_per_gpu.")
@click.option("--grad-accum", type=int, default=None, help="Override gradient_accumulation_steps.")
@click.option("--max-length", type=int, default=512, show_default=True, help="Tokens per sample, right-truncated.")
@data_options
def train_cmd(model_dir, data_path, out_dir, ds_config, epochs, max_steps, seed, save_every, lr, micro_batch,
              grad_accum, max_length, **kw):
    """Supervised fine-tuning on the response tokens of a corpus, under DeepSpeed (ZeRO-3 by default)."""
    from lancet_ds.sft import run_sft

    data = data_spec(data_path, kw)
    run_sft(model_dir=model_dir, data_path=data_path, out_dir=out_dir, ds_config_path=ds_config, epochs=epochs,
            max_steps=max_steps, seed=seed, save_every=save_every, lr=lr, micro_batch=micro_batch,
            grad_accum=grad_accum, on_bad_record=data.on_bad_record, max_length=max_length, split=data.split,
            spec=data.schema)


@cli.command("demo-world")
@click.argument("out_dir", type=click.Path())
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same world.")
@click.option("--size", type=click.Choice(["tiny", "default", "large"]), default="default", show_default=True,
              help="tiny: seconds-scale, for tests; default: a few minutes on 2 CPU cores; large: bigger corpus and model.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config for training.")
def demo_world_cmd(out_dir, seed, size, ds_config):
    """Build the synthetic contaminated world: corpus, tokenizer, impure and safe models, judge, queries."""
    from lancet_ds.demo_world.build import build_world

    build_world(out_dir, seed=seed, size=size, ds_config_path=ds_config)


@cli.command("fit")
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
    fit_factors(run_dir, corpus, from_click(FitArgs, kw), model_dir, ds_config, overwrite)


@cli.group()
def factors():
    """Look at fitted factors."""


@factors.command("inspect")
@click.argument("run_dir", type=click.Path())
def factors_inspect(run_dir):
    """Per sublayer: shapes, counts, eigenvalue range, condition number, and the damping to be used."""
    from lancet_ds.console import console
    from lancet_ds.influence.inspect import factor_table

    console().print(factor_table(run_dir))


@cli.command("queries")
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
    run_queries(run, queries, from_click(QueriesArgs, kw), model_or_fitted(run, model_dir), ds_config, overwrite)


@cli.command("recall")
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
    run_recall(run, corpus, queries, args, overwrite)


@cli.command("score")
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
    run_scores(run, corpus, from_click(ScoreArgs, kw), model_or_fitted(run, model_dir), ds_config, overwrite)


@cli.group()
def scores():
    """Look at influence scores."""


@scores.command("top")
@click.argument("run_dir", type=click.Path())
@click.option("-n", "n", type=int, default=20, show_default=True, help="Samples on each side.")
def scores_top(run_dir, n):
    """The most positive and most negative samples with their text (the paper's Table 8)."""
    from lancet_ds.console import console
    from lancet_ds.influence.top import top_tables

    for table in top_tables(run_dir, n):
        console().print(table)


@cli.command("correct")
@run_option
@click.option("--data", "data_path", type=click.Path(), default=None,
              help="Training corpus for the replay sample (default: the corpus the run's scores were made on).")
@click_options(CorrectArgs)
@data_options
@model_option
@ds_config_option
@overwrite_option
def correct_cmd(run_dir, data_path, model_dir, ds_config, overwrite, **kw):
    """Post-train the model with IBO (or the PBO / GA baselines) on its influential samples."""
    from lancet_ds.ibo.correct import run_correct

    run, args = RunDir.of(run_dir), from_click(CorrectArgs, kw)
    corpus = data_or_recorded(run, run.scores, "corpus", data_path, kw, "--data")
    run_correct(run, args, corpus, model_or_fitted(run, model_dir), ds_config, overwrite)


@cli.command("export")
@run_option
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Where the Hugging Face checkpoint goes.")
@click_options(ExportArgs)
def export_cmd(run_dir, out_dir, **kw):
    """Write the corrected model as a Hugging Face checkpoint (sharded safetensors) with a model card."""
    from lancet_ds.export import run_export

    run = RunDir.of(run_dir)
    queries = data_or_recorded(run, run.queries, "queries", None, {}, "--queries") \
        if (run.queries / STAGE_RECORD).exists() else None
    run_export(run, out_dir, from_click(ExportArgs, kw), queries)


@cli.command("evaluate")
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
    rows = run_evaluate(run, args, model_or_fitted(run, model_dir), ds_config, overwrite)
    if dist_utils.is_main():
        console().print(eval_table(rows))


STAGE_COMMANDS = {"fit": fit_cmd, "queries": queries_cmd, "recall": recall_cmd, "score": score_cmd,
                  "correct": correct_cmd, "export": export_cmd, "evaluate": evaluate_cmd}
"""Stage name → its command; each command's stage options are generated from `job.spec.STAGE_OPTIONS`."""


@cli.group()
def job():
    """The production job: every stage from a job file (or the embedded demo), resumable."""


def job_options(fn):
    """Options shared by `job run` and `job validate`."""
    options = [
        click.option("--job", "job_file", type=click.Path(), default=None,
                     help="Job file (YAML, README 'Job file'); without it: the embedded demo job."),
        click.option("--run-dir", default=None, help="Run directory (overrides the job's `output`; demo: runs/demo)."),
        click.option("--config", "--ds-config", "ds_config", default=None,
                     help=f"DeepSpeed JSON config (overrides the job's `ds_config`; default {DEFAULT_DS_CONFIG})."),
        click.option("--seed", type=int, default=None, help="Overrides the job's `seed` (demo: the world's seed too)."),
        click.option("--size", type=click.Choice(["tiny", "default", "large"]), default="default", show_default=True,
                     help="Demo job only: the demo world's size."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override any job key, e.g. --set stages.correct.steps=200 (repeatable)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def resolve_job(job_file, run_dir, ds_config, seed, size, sets):
    from lancet_ds.job.demo import demo_job
    from lancet_ds.job.spec import apply_overrides, build_spec, load_job_file

    if job_file:
        raw = load_job_file(job_file)
    else:
        raw = demo_job(run_dir or "runs/demo", size=size, seed=seed or 0)
    if run_dir:
        raw["output"] = run_dir
    if ds_config:
        raw["ds_config"] = ds_config
    if seed is not None:
        raw["seed"] = seed
    return build_spec(apply_overrides(raw, list(sets)), where=job_file or "demo job")


@job.command("run")
@job_options
@click.option("--force", is_flag=True, help="Redo finished stages whose options or inputs changed (and what follows).")
@click.option("--from-stage", default=None, help="Clear this stage and every later one, then redo them.")
@click.option("--quiet", is_flag=True, help="Only errors and the final summary line on the console (log.jsonl has all).")
def job_run(job_file, run_dir, ds_config, seed, size, sets, force, from_stage, quiet):
    """Validate, then fit → queries → recall → score → correct → export → evaluate → report."""
    from lancet_ds.console import set_quiet
    from lancet_ds.job.runner import run_job

    set_quiet(quiet)
    run_job(resolve_job(job_file, run_dir, ds_config, seed, size, sets), force=force, from_stage=from_stage)


@job.command("validate")
@click.argument("job_file", type=click.Path(), required=False)
@click.option("--run-dir", default=None, help="Run directory (overrides the job's `output`).")
@click.option("--config", "--ds-config", "ds_config", default=None, help="DeepSpeed JSON config (overrides `ds_config`).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any job key (repeatable).")
@click.option("--world-size", type=int, default=None, help="Ranks the job will run on (default: $WORLD_SIZE or 1).")
@click.option("--scan", type=int, default=1000, show_default=True, help="Corpus records to check; 0 = all.")
def job_validate(job_file, run_dir, ds_config, sets, world_size, scan):
    """Check a job in seconds: files, schemas, model config and tokenizer, DeepSpeed config, run directory."""
    import os

    from lancet_ds.job.validate import validate_job

    if not job_file:
        raise click.UsageError("give the job file: lancet-ds job validate JOB.yaml")
    spec = resolve_job(job_file, run_dir, ds_config, None, "default", sets)
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    for note in validate_job(spec, world, scan=scan):
        click.echo(f"ok  {note}")
    click.echo(f"ok  job {job_file} is valid for {world} rank(s); run directory {spec.output}")


@cli.command("bench")
@click.option("--suite", type=click.Choice(["speed", "quality", "all"]), default="all", show_default=True)
@click.option("--size", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: a few minutes on 2 CPU cores; full: hidden 1024, a larger corpus and world, 3 seeds.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Writes OUT/bench.json and OUT/bench.md.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config (ZeRO-3).")
def bench_cmd(suite, size, out_dir, ds_config):
    """Speed against plain forward+backward and the peers, and recall / correction quality (issue 7)."""
    from lancet_ds.bench.run import run_bench

    run_bench(suite, size, out_dir, ds_config)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv`; a `LancetError` becomes its message and exit code. Returns the code."""
    from lancet_ds import distributed as dist_utils

    code = 1
    try:
        cli.main(args=argv, prog_name="lancet-ds", standalone_mode=False)
        code = 0
    except click.exceptions.Abort:
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except LancetError as exc:
        click.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    finally:
        dist_utils.shutdown(after_success=code == 0)
    return code


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
