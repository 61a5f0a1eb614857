"""The `lancet-ds` command line: one click group, each subcommand a thin call into the library.

Every subcommand runs as a plain process (one rank) and under the DeepSpeed launcher
(`deepspeed --num_gpus N --module lancet_ds <subcommand> ...`), which adds `--local_rank`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lancet_ds import __version__
from lancet_ds.errors import LancetError

DEFAULT_DS_CONFIG = str(Path(__file__).resolve().parent.parent / "ds_configs" / "zero3.json")


def schema_options(fn):
    """The options that say how to read a corpus (shared by every command that reads one)."""
    options = [
        click.option("--schema", type=click.Choice(["generic", "hh", "beavertails", "pku"]), default="generic",
                     show_default=True, help="Record layout of the corpus."),
        click.option("--prompt-field", default="prompt", show_default=True, help="generic: prompt field."),
        click.option("--response-field", default="response", show_default=True, help="generic: response field."),
        click.option("--id-field", default="id", show_default=True, help="generic: stable id field, if any."),
        click.option("--hh-side", type=click.Choice(["chosen", "rejected"]), default="chosen", show_default=True,
                     help="hh: which transcript to read."),
        click.option("--pku-response", type=click.Choice(["0", "1", "both"]), default="both", show_default=True,
                     help="pku: which response(s) to read."),
        click.option("--split", default=None, help="Split of a DatasetDict directory."),
        click.option("--on-bad-record", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
                     help="fail: stop at the first bad record with file:line; skip: write it to rejects.jsonl."),
        click.option("--max-length", type=int, default=512, show_default=True,
                     help="Tokens per sample after truncation (see the README's truncation policy)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def spec_from(kw: dict):
    from lancet_ds.data.schemas import SchemaSpec

    return SchemaSpec(name=kw.pop("schema"), prompt_field=kw.pop("prompt_field"),
                      response_field=kw.pop("response_field"), id_field=kw.pop("id_field"),
                      hh_side=kw.pop("hh_side"), pku_response=kw.pop("pku_response"))


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
@schema_options
@click.option("--model", "model_dir", type=click.Path(), default=None,
              help="Model (or tokenizer) directory: adds token-length statistics and the truncation check.")
def data_inspect(path, model_dir, **kw):
    """Row counts, fields, token lengths and every bad record of PATH; exits 3 when the policy fails."""
    from lancet_ds.console import console
    from lancet_ds.data.inspect import inspect_corpus, print_report
    from lancet_ds.errors import EXIT_BAD_INPUT
    from lancet_ds.modeling import load_tokenizer

    spec = spec_from(kw)
    tokenizer = load_tokenizer(model_dir) if model_dir else None
    report = inspect_corpus(path, spec, tokenizer, kw["max_length"], kw["split"])
    print_report(report, console())
    if report.rejects and kw["on_bad_record"] == "fail":
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
@schema_options
def train_cmd(model_dir, data_path, out_dir, ds_config, epochs, max_steps, seed, save_every, lr, micro_batch,
              grad_accum, **kw):
    """Supervised fine-tuning on the response tokens of a corpus, under DeepSpeed (ZeRO-3 by default)."""
    from lancet_ds.sft import run_sft

    run_sft(model_dir=model_dir, data_path=data_path, out_dir=out_dir, ds_config_path=ds_config, epochs=epochs,
            max_steps=max_steps, seed=seed, save_every=save_every, lr=lr, micro_batch=micro_batch,
            grad_accum=grad_accum, on_bad_record=kw.pop("on_bad_record"), max_length=kw.pop("max_length"),
            split=kw.pop("split"), spec=spec_from(kw))


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
@click.option("--method", type=click.Choice(["linfac", "ekfac"]), default="linfac", show_default=True)
@click.option("--fisher", type=click.Choice(["sampled", "empirical"]), default="sampled", show_default=True,
              help="Labels of the curvature gradients: drawn from the model, or the dataset's.")
@click.option("--fit-responses", type=click.Choice(["generate", "corpus"]), default="generate", show_default=True,
              help="generate: the model answers the sampled prompts (the paper's workflow); corpus: keep the corpus responses.")
@click.option("--num-samples", type=int, default=1000, show_default=True, help="Fitting sequences drawn from the corpus.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Accumulation dtype of the factor sums.")
@click.option("--eigen-correction", is_flag=True, help="LinFAC: correct the eigenvalues in a second pass.")
@click.option("--attention", is_flag=True, help="Also treat attention blocks as sublayers.")
@click.option("--sublayer", "sublayers", multiple=True,
              help="Sublayer pattern: a module-name REGEX, or 'IN_REGEX -> OUT_REGEX' (repeatable).")
@click.option("--micro-batch", type=int, default=8, show_default=True, help="Sequences per rank per pass.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="generate: longest response.")
@click.option("--checkpoint-every", type=int, default=256, show_default=True,
              help="Checkpoint the running sums about every N sequences (resume point).")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config.")
@click.option("--overwrite", is_flag=True, help="Replace factors fitted with other options.")
@schema_options
def fit_cmd(model_dir, data_path, run_dir, ds_config, overwrite, sublayers, **kw):
    """Fit LinFAC (or EK-FAC) factors on a ZeRO-3-sharded model and store them as safetensors."""
    from lancet_ds.influence.fit import FitArgs, fit_factors

    on_bad_record, split = kw.pop("on_bad_record"), kw.pop("split")
    spec = spec_from(kw)
    args = FitArgs(sublayer_patterns=list(sublayers), **kw)
    fit_factors(model_dir, data_path, run_dir, args, spec, ds_config, on_bad_record, split, overwrite)


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
@click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory holding factors/.")
@click.option("--queries", "queries_path", type=click.Path(), required=True,
              help="Influence queries: prompts with the undesirable responses.")
@click.option("--k", default="10", show_default=True, help="k-means query batches; 'all' = one query per batch.")
@click.option("--damping", type=float, default=None, help="λ for every sublayer (default 0.1 × mean curvature diagonal).")
@click.option("--ihvp-rank", type=int, default=None, help="Store each IHVP as rank-r factors.")
@click.option("--micro-batch", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of k-means.")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Default: the model the factors were fitted on.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config.")
@click.option("--overwrite", is_flag=True, help="Replace IHVPs made with other options.")
@schema_options
def queries_cmd(run_dir, queries_path, k, damping, ihvp_rank, micro_batch, seed, model_dir, ds_config, overwrite, **kw):
    """Query gradients on the sharded model, k-means batches, and per-batch IHVPs (Eq. 12–13)."""
    from lancet_ds.influence.queries import run_queries

    on_bad_record, max_length = kw.pop("on_bad_record"), kw.pop("max_length")
    kw.pop("split")
    run_queries(run_dir, queries_path, spec_from(kw), ds_config, k=k, damping=damping, ihvp_rank=ihvp_rank,
                micro_batch=micro_batch, max_length=max_length, seed=seed, on_bad_record=on_bad_record,
                model_dir=model_dir, overwrite=overwrite)


@cli.command("recall")
@click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory holding queries/.")
@click.option("--data", "data_path", type=click.Path(), required=True, help="Training corpus.")
@click.option("--top-k", type=int, default=100, show_default=True, help="Samples recalled per query.")
@click.option("--all", "score_all", is_flag=True, help="Skip recall: every corpus sample is a candidate.")
@click.option("--chunk-size", type=int, default=10000, show_default=True, help="Documents per streamed chunk.")
@click.option("--queries", "queries_path", type=click.Path(), default=None,
              help="Queries (generic schema); default: those of the run's queries stage.")
@click.option("--overwrite", is_flag=True, help="Replace a recall made with other options.")
@schema_options
def recall_cmd(run_dir, data_path, top_k, score_all, chunk_size, queries_path, overwrite, **kw):
    """Streaming TF-IDF top-k recall of training samples per query (scikit-learn's weighting)."""
    from lancet_ds.recall.stage import run_recall

    on_bad_record, split = kw.pop("on_bad_record"), kw.pop("split")
    kw.pop("max_length")
    run_recall(run_dir, data_path, spec_from(kw), top_k=top_k, score_all=score_all, chunk_size=chunk_size,
               on_bad_record=on_bad_record, split=split, queries_path=queries_path, overwrite=overwrite)


@cli.command("score")
@click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory holding queries/ and recall/.")
@click.option("--data", "data_path", type=click.Path(), required=True, help="Training corpus.")
@click.option("--micro-batch", type=int, default=8, show_default=True)
@click.option("--per-sublayer", is_flag=True, help="Also store each sublayer's share of the scores.")
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Default: the model the factors were fitted on.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config.")
@click.option("--overwrite", is_flag=True, help="Replace scores made with other options.")
@schema_options
def score_cmd(run_dir, data_path, micro_batch, per_sublayer, model_dir, ds_config, overwrite, **kw):
    """Influence of every candidate on every query batch (Eq. 9), resumable."""
    from lancet_ds.influence.score import run_scores

    on_bad_record, split, max_length = kw.pop("on_bad_record"), kw.pop("split"), kw.pop("max_length")
    run_scores(run_dir, data_path, spec_from(kw), ds_config, micro_batch=micro_batch, max_length=max_length,
               on_bad_record=on_bad_record, split=split, per_sublayer=per_sublayer, model_dir=model_dir,
               overwrite=overwrite)


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
@click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory holding scores/.")
@click.option("--method", type=click.Choice(["ibo", "pbo", "ga"]), default="ibo", show_default=True)
@click.option("--selection", type=click.Choice(["topk", "pareto"]), default="topk", show_default=True)
@click.option("--k", type=int, default=16, show_default=True, help="topk: samples per side and query batch.")
@click.option("--pareto-mass", type=float, default=0.8, show_default=True)
@click.option("--replay", type=int, default=64, show_default=True, help="Corpus samples added to the neutral set.")
@click.option("--epsilon", type=float, default=-1.0, show_default=True, help="ε of L_COR (−1 corrects).")
@click.option("--cor-form", type=click.Choice(["dpo", "paper"]), default="dpo", show_default=True)
@click.option("--lam-prox", type=float, default=1e-3, show_default=True, help="λ of the proximity term.")
@click.option("--lr", type=float, default=1e-5, show_default=True)
@click.option("--steps", type=int, default=4000, show_default=True)
@click.option("--pair-batch", type=int, default=8, show_default=True)
@click.option("--neutral-batch", type=int, default=24, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-every", type=int, default=100, show_default=True)
@click.option("--validate-every", type=int, default=0, show_default=True,
              help="Measure the query log-prob every N steps and keep the best checkpoint.")
@click.option("--validate-clean", type=click.Path(), default=None,
              help="Clean samples: a best checkpoint must keep their perplexity within --max-ppl-increase.")
@click.option("--max-ppl-increase", type=float, default=0.05, show_default=True)
@click.option("--patience", type=int, default=0, show_default=True, help="Early stop after N validations without gain.")
@click.option("--max-length", type=int, default=512, show_default=True)
@click.option("--model", "model_dir", type=click.Path(), default=None, help="Default: the model the factors were fitted on.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config (ZeRO-3).")
@click.option("--overwrite", is_flag=True, help="Discard a correction (finished or not) made with other options.")
def correct_cmd(run_dir, model_dir, ds_config, overwrite, **kw):
    """Post-train the model with IBO (or the PBO / GA baselines) on its influential samples."""
    from lancet_ds.ibo.correct import CorrectArgs, run_correct

    run_correct(run_dir, CorrectArgs(**kw), ds_config, model_dir, overwrite)


@cli.command("export")
@click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory holding correct/.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Where the Hugging Face checkpoint goes.")
@click.option("--max-shard-size", default="2GB", show_default=True)
@click.option("--tag", default=None, help="Checkpoint tag (default: best, else final).")
def export_cmd(run_dir, out_dir, max_shard_size, tag):
    """Write the corrected model as a Hugging Face checkpoint (sharded safetensors) with a model card."""
    from lancet_ds.export import run_export

    run_export(run_dir, out_dir, max_shard_size, tag)


@cli.command("evaluate")
@click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory (queries/, export.json).")
@click.option("--model", "models", multiple=True, help="NAME=DIR of another model to measure (repeatable).")
@click.option("--clean", type=click.Path(), default=None, help="Held-out clean samples for perplexity.")
@click.option("--prompts", type=click.Path(), default=None, help="Unseen prompts for generation (field `forbidden`).")
@click.option("--judge", type=click.Path(), default=None, help="judge.json of the demo world, or an HF classifier dir.")
@click.option("--n", type=int, default=3, show_default=True, help="Generations per prompt.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--max-length", type=int, default=512, show_default=True)
@click.option("--micro-batch", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config.")
def evaluate_cmd(run_dir, models, ds_config, **kw):
    """Impure vs corrected (and others): query log-prob, clean perplexity, harmful rate, diversity."""
    from lancet_ds.console import console
    from lancet_ds.evaluation.evaluate import EvalArgs, eval_table, run_evaluate

    pairs = []
    for m in models:
        if "=" not in m:
            raise click.BadParameter(f"{m!r}: give --model NAME=DIR", param_hint="--model")
        pairs.append(tuple(m.split("=", 1)))
    rows = run_evaluate(run_dir, EvalArgs(**kw), ds_config, pairs)
    from lancet_ds import distributed as dist_utils

    if dist_utils.is_main():
        console().print(eval_table(rows))


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
