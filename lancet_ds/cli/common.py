"""What the commands share: how a data set is named on the command line (generated from `DataSpec` and
`SchemaSpec`), the run-level options, and the command-line defaults taken from an earlier stage's record."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import click
from click.core import ParameterSource

from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.options import click_options, from_click
from lancet_ds.packaged import DEFAULT_DS_CONFIG
from lancet_ds.run_dir import STAGE_RECORD, RunDir


@contextlib.contextmanager
def locked(run_dir: str | Path):
    """Hold the run directory's lock (rank 0) while a stage command writes there; a run directory
    another job or command holds is refused with exit 5 on every rank."""
    from lancet_ds import distributed as dist_utils
    from lancet_ds.run_lock import RunLock

    dist_utils.init_distributed()
    lock = RunLock(run_dir)
    dist_utils.on_rank0(lock.acquire)
    try:
        yield
    finally:
        if dist_utils.is_main():
            lock.release()


def data_options(fn):
    """How to read a data set (corpus or queries): SchemaSpec's fields (`--schema` is its `name`) and
    DataSpec's `--split` and `--on-bad-record`, generated from those dataclasses."""
    fn = click_options(DataSpec, skip=("path", "schema"))(fn)
    return click_options(SchemaSpec, rename={"name": "--schema"})(fn)


READ_OPTIONS = tuple(f.name for f in dataclasses.fields(DataSpec) if f.name not in ("path", "schema"))
"""DataSpec's own options besides the path and the schema (`split`, `on_bad_record`)."""
DATA_OPTIONS = tuple(f.name for f in dataclasses.fields(SchemaSpec)) + READ_OPTIONS
"""The parameter names `data_options` adds (SchemaSpec's fields, `--schema` being `name`, and READ_OPTIONS)."""


def data_spec(path: str, kw: dict) -> DataSpec:
    """The DataSpec of `path` from the options `data_options` added (taken out of `kw`)."""
    schema = from_click(SchemaSpec, kw)
    rest = from_click(DataSpec, {**{k: kw.pop(k) for k in READ_OPTIONS}, "path": path})
    return DataSpec(path=path, schema=schema, split=rest.split, on_bad_record=rest.on_bad_record)


def _recorded(run: RunDir, stage_dir: Path, key: str, what: str, flag: str):
    """A value an earlier stage of this run recorded (a command-line default, never a stage's input)."""
    record = stage_dir / STAGE_RECORD
    if not record.exists():
        command = {run.factors: "fit --out", run.queries: "queries --run", run.scores: "score --run"}[stage_dir]
        raise ConfigError(f"{record}: missing, so {what} is unknown. Pass {flag}, or run `lancet-ds {command} "
                          f"{run.root}` first.")
    from lancet_ds.fileio import read_json

    return read_json(record)["config"][key]


def _still_there(path: str, stage_dir: Path, what: str, flag: str) -> str:
    """A recorded input's path, refused when nothing lies there any more (the run or its inputs moved)."""
    if not Path(path).exists():
        raise ConfigError(f"{stage_dir / STAGE_RECORD}: {what} was read from {path}, which is gone (moved?). Pass "
                          f"{flag} with where it lies now; a stage reuses its results when the contents are the same.")
    return path


def model_or_fitted(run: RunDir, model_dir: str | None) -> str:
    """--model, else the model the run's factors were fitted on."""
    return model_dir or _still_there(_recorded(run, run.factors, "model_dir", "the model", "--model"), run.factors,
                                     "the model", "--model")


def _given_on_command_line(names: tuple[str, ...]) -> list[str]:
    """Which of these parameters of the running click command the user typed (their option strings)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return []
    params = {p.name: p for p in ctx.command.params}
    return [params[n].opts[0] for n in names
            if n in params and ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]


def data_or_recorded(run: RunDir, stage_dir: Path, key: str, path: str | None, kw: dict, flag: str) -> DataSpec:
    """The data set named on the command line, else the one an earlier stage of the run read."""
    if path:
        return data_spec(path, kw)
    given = _given_on_command_line(DATA_OPTIONS)
    if given:
        raise ConfigError(f"{', '.join(given)} given without {flag}: without it the data set is the one recorded in "
                          f"{stage_dir / STAGE_RECORD}, read as it was recorded. Pass {flag} to read a data set with "
                          "these options, or drop them.")
    for name in DATA_OPTIONS:
        kw.pop(name, None)
    recorded = _recorded(run, stage_dir, key, flag.lstrip("-"), flag)
    _still_there(recorded["path"], stage_dir, f"the {flag.lstrip('-')} data set", flag)
    fields = {f.name for f in dataclasses.fields(DataSpec)}  # the record also holds the content's sha256
    return DataSpec(**{k: v for k, v in recorded.items() if k in fields - {"schema"}}, schema=SchemaSpec(**recorded["schema"]))


run_option = click.option("--run", "run_dir", type=click.Path(), required=True, help="Run directory.")
model_option = click.option("--model", "model_dir", type=click.Path(), default=None,
                            help="Model directory (default: the model the run's factors were fitted on).")
ds_config_option = click.option("--ds-config", default=DEFAULT_DS_CONFIG, show_default=True,
                                 help="DeepSpeed JSON config.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace (or discard unfinished) results of this stage made with other options.")

