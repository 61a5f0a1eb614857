"""The commands around the stages: data inspection, supervised training, the demo world, the production
job (run, validate), the capacity plan and the benchmarks."""

from __future__ import annotations

import sys

import click

from lancet_ds.cli.common import data_options, data_spec
from lancet_ds.options import click_options, from_click
from lancet_ds.packaged import DEFAULT_DS_CONFIG
from lancet_ds.plan import PlanInputs


@click.group()
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
    if report.samples == 0 and not report.rejects:
        click.echo(f"{path}: holds no record; the stages would have nothing to read.", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if report.rejects and data.on_bad_record == "fail":
        click.echo(f"{len(report.rejects)} bad record(s) under on_bad_record=fail: the stages would stop at "
                   f"{report.rejects[0]['location']}. Fix them or use --on-bad-record skip.", err=True)
        sys.exit(EXIT_BAD_INPUT)


@click.command("train")
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


@click.command("demo-world")
@click.argument("out_dir", type=click.Path())
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same world.")
@click.option("--size", type=click.Choice(["tiny", "default", "large"]), default="default", show_default=True,
              help="tiny: seconds-scale, for tests; default: a few minutes on 2 CPU cores; large: bigger corpus and model.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config for training.")
@click.option("--overwrite", is_flag=True, help="Replace a world built with another seed or size in OUT_DIR.")
def demo_world_cmd(out_dir, seed, size, ds_config, overwrite):
    """Build the synthetic contaminated world: corpus, tokenizer, impure and safe models, judge, queries. On an
    x86-64 CPU the build restarts itself under machine-independent numerics (`cpu_numerics`), so every such
    machine builds the same world from the same seed and rank count."""
    from lancet_ds.cpu_numerics import restart_pinned
    from lancet_ds.demo_world.build import build_world

    restart_pinned("demo world")
    build_world(out_dir, seed=seed, size=size, ds_config_path=ds_config, overwrite=overwrite)



@click.group()
def job():
    """The production job: every stage from a job file (or the embedded demo), resumable."""


def job_options(fn):
    """Options shared by `job run` and `job validate`."""
    options = [
        click.option("--job", "job_file", type=click.Path(), default=None,
                     help="Job file (YAML, README 'Jobs on your own model and data'); without it: the embedded "
                          "demo job."),
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
    return build_spec(apply_overrides(raw, list(sets)), where=job_file or "demo job", sets=tuple(sets))


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
    from lancet_ds.plan import enforce, job_plan, plan_lines

    plan = job_plan(spec, world)
    for line in plan_lines(plan):
        click.echo(f"plan  {line}")
    enforce(plan)
    click.echo(f"ok  job {job_file} is valid for {world} rank(s); run directory {spec.output}")


@click.command("bench")
@click.option("--suite", type=click.Choice(["speed", "quality", "scale", "all"]), default="all", show_default=True)
@click.option("--size", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: a few minutes on 2 CPU cores; full: hidden 1024, a larger corpus and world, 3 seeds.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Writes OUT/bench.json and OUT/bench.md.")
@click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True, help="DeepSpeed JSON config (ZeRO-3).")
def bench_cmd(suite, size, out_dir, ds_config):
    """Speed against plain forward+backward and the peers, and recall / correction quality (issue 7)."""
    from lancet_ds.bench.run import run_bench

    run_bench(suite, size, out_dir, ds_config)



@click.command("plan")
@click.option("--model", "model", required=True, help="A Hugging Face model directory or its config.json (no weights needed).")
@click_options(PlanInputs, rename={"sublayer_patterns": "--sublayer"})
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(model, as_json, **kw):
    """Per-rank memory, partitions and time of each stage, from the model's config alone (exit 4 if it cannot fit)."""
    from lancet_ds.plan import dump, enforce, make_plan, meta_model, plan_lines

    plan = make_plan(meta_model(model), from_click(PlanInputs, kw))
    click.echo(dump(plan) if as_json else "\n".join(plan_lines(plan)))
    enforce(plan)
