"""The job's stages in order (DESIGN.md section 2), each a thin call into its stage command's library
function, with what it reads (input files to fingerprint, upstream stages), the options that decide
its result, and what it writes under the run directory (cleared by `--from-stage`)."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from lancet_ds import distributed as dist_utils
from lancet_ds.evaluation.evaluate import JUDGED_FILES
from lancet_ds.ibo.correct import FILE_OPTIONS
from lancet_ds.job.spec import JobSpec
from lancet_ds.options import recorded
from lancet_ds.run_dir import STAGE_RECORD, RunDir


@dataclass(frozen=True)
class Stage:
    name: str
    after: tuple[str, ...]
    """Upstream stages: a change there changes this stage's fingerprint."""
    inputs: Callable[[JobSpec], dict[str, str | None]]
    """Named files or directories the stage reads from outside the run directory."""
    config: Callable[[JobSpec], dict[str, Any]]
    outputs: tuple[str, ...]
    """What it writes, relative to the run directory (what `--from-stage` clears)."""
    run: Callable[[JobSpec, RunDir, bool], Any]
    """(spec, run directory, overwrite) → the stage function's result."""
    enabled: Callable[[JobSpec], bool] = lambda spec: True
    always: tuple[str, ...] = ()
    """The outputs every finished run of it leaves (none given: the first of `outputs`): a finished stage missing one
    is run again, not skipped on its record."""

    def results(self) -> tuple[str, ...]:
        return self.always or self.outputs[:1]


def _opts(spec: JobSpec, name: str) -> dict[str, Any]:
    return recorded(spec.stages[name])


def _world(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.demo_world.build import build_world

    return build_world(run.world, seed=spec.demo_world["seed"], size=spec.demo_world["size"],
                       ds_config_path=spec.ds_config, overwrite=overwrite)


def _fit(spec: JobSpec, run: RunDir, overwrite: bool, method: str | None = None, fit_set_from: RunDir | None = None):
    from lancet_ds.influence.fit import fit_factors

    args = spec.stages["fit"]
    if method is not None:
        args = dataclasses.replace(args, method=method, fit_set_from=str(fit_set_from) if fit_set_from else None)
    return fit_factors(run, spec.corpus, args, spec.model, spec.ds_config, overwrite)


def _queries(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.influence.queries import run_queries

    return run_queries(run, spec.queries, spec.stages["queries"], spec.model, spec.ds_config, overwrite)


def _recall(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.recall.stage import run_recall

    return run_recall(run, spec.corpus, spec.queries, spec.stages["recall"], overwrite)


def _score(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.influence.score import run_scores

    return run_scores(run, spec.corpus, spec.stages["score"], spec.model, spec.ds_config, overwrite)


def _correct(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.ibo.correct import run_correct

    return run_correct(run, spec.stages["correct"], spec.corpus, spec.model, spec.ds_config, overwrite)


def _export(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.export import run_export

    return run_export(run, run.model, spec.stages["export"], spec.queries, overwrite, model_dir=spec.model)


def _evaluate(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.evaluation.evaluate import run_evaluate

    return run_evaluate(run, spec.stages["evaluate"], spec.model, spec.ds_config, overwrite)


def _ekfac(spec: JobSpec, run: RunDir, overwrite: bool):
    """EK-FAC beside LinFAC for the report's PR curves: its own fit (on LinFAC's fit set), IHVPs and scores
    on the same recalled candidates, in the run directory `run.compare("ekfac")`."""
    sub = run.compare("ekfac")
    copied = sub.recall / STAGE_RECORD
    if dist_utils.is_main() and (not copied.exists() or copied.read_bytes() != (run.recall / STAGE_RECORD).read_bytes()):
        shutil.rmtree(sub.recall, ignore_errors=True)
        shutil.copytree(run.recall, sub.recall)
    dist_utils.barrier()
    from lancet_ds.influence.fit import recorded_draw

    # LinFAC's fit set, unless an older lancet_ds recorded it without how it was drawn (then drawn anew, the same)
    _fit(spec, sub, overwrite, method="ekfac", fit_set_from=run if recorded_draw(run.fit_set) is not None else None)
    _queries(spec, sub, overwrite)
    return _score(spec, sub, overwrite)


def _report(spec: JobSpec, run: RunDir, overwrite: bool):
    from lancet_ds.report import write_report

    return write_report(run, spec)


def _data(spec: JobSpec, key: str) -> dict[str, Any]:
    return asdict(getattr(spec, key))


def _files(run: RunDir, *paths) -> tuple[str, ...]:
    """Outputs as paths relative to the run directory (what `--from-stage` clears)."""
    return tuple(str(Path(p).relative_to(run.root)) for p in paths)


_LAYOUT = RunDir(Path("."))
STAGES: tuple[Stage, ...] = (
    Stage("world", (), lambda s: {}, lambda s: dict(s.demo_world or {}), _files(_LAYOUT, _LAYOUT.world), _world,
          enabled=lambda s: s.demo_world is not None),
    Stage("fit", ("world",), lambda s: {"model": s.model, "corpus": s.corpus.path},
          lambda s: {"fit": _opts(s, "fit"), "corpus": _data(s, "corpus")}, _files(_LAYOUT, _LAYOUT.factors), _fit),
    Stage("queries", ("fit",), lambda s: {"queries": s.queries.path},
          lambda s: {"queries": _opts(s, "queries"), "data": _data(s, "queries")}, _files(_LAYOUT, _LAYOUT.queries),
          _queries),
    Stage("recall", ("world",), lambda s: {"corpus": s.corpus.path, "queries": s.queries.path},
          lambda s: {"recall": _opts(s, "recall"), "corpus": _data(s, "corpus"), "queries": _data(s, "queries")},
          _files(_LAYOUT, _LAYOUT.recall), _recall),
    Stage("score", ("queries", "recall"), lambda s: {"corpus": s.corpus.path},
          lambda s: {"score": _opts(s, "score"), "corpus": _data(s, "corpus")}, _files(_LAYOUT, _LAYOUT.scores), _score),
    Stage("correct", ("score",), lambda s: {k: getattr(s.stages["correct"], k) for k in FILE_OPTIONS},
          lambda s: {"correct": _opts(s, "correct")},
          _files(_LAYOUT, _LAYOUT.correct, _LAYOUT.ref_logprobs, _LAYOUT.selection), _correct),
    Stage("export", ("correct",), lambda s: {}, lambda s: {"export": _opts(s, "export")},
          _files(_LAYOUT, _LAYOUT.model, _LAYOUT.export_record), _export,
          always=_files(_LAYOUT, _LAYOUT.export_record, _LAYOUT.model)),
    Stage("evaluate", ("export",),
          lambda s: {k: getattr(s.stages["evaluate"], k) for k in JUDGED_FILES}
          | {f"compare:{k}": v for k, v in s.stages["evaluate"].compare.items()},
          lambda s: {"evaluate": _opts(s, "evaluate")}, _files(_LAYOUT, _LAYOUT.evaluate), _evaluate),
    Stage("ekfac", ("recall",), lambda s: {"model": s.model, "corpus": s.corpus.path, "queries": s.queries.path},
          lambda s: {"fit": _opts(s, "fit"), "queries": _opts(s, "queries"), "score": _opts(s, "score"),
                     "corpus": _data(s, "corpus"), "data": _data(s, "queries")},
          _files(_LAYOUT, _LAYOUT.compare("ekfac").root), _ekfac, enabled=lambda s: s.compare_ekfac),
    Stage("report", ("evaluate", "ekfac", "score", "correct"), lambda s: {}, lambda s: {},
          _files(_LAYOUT, _LAYOUT.report_json, _LAYOUT.report_md, _LAYOUT.plots), _report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
