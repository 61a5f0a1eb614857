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
from lancet_ds.job.spec import JobSpec


@dataclass(frozen=True)
class Stage:
    name: str
    after: tuple[str, ...]
    """Upstream stages: a change there changes this stage's fingerprint."""
    inputs: Callable[[JobSpec], dict[str, str | None]]
    """Named files or directories the stage reads from outside the run directory."""
    config: Callable[[JobSpec], dict[str, Any]]
    outputs: tuple[str, ...]
    run: Callable[[JobSpec, Path, bool], Any]
    """(spec, run directory, overwrite) → the stage function's result."""
    enabled: Callable[[JobSpec], bool] = lambda spec: True


def _opts(spec: JobSpec, name: str) -> dict[str, Any]:
    return asdict(spec.stages[name])


def _world(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.demo_world.build import build_world

    return build_world(run / "world", seed=spec.demo_world["seed"], size=spec.demo_world["size"],
                       ds_config_path=spec.ds_config)


def _fit(spec: JobSpec, run: Path, overwrite: bool, method: str | None = None):
    from lancet_ds.influence.fit import fit_factors

    args = spec.stages["fit"] if method is None else dataclasses.replace(spec.stages["fit"], method=method)
    c = spec.corpus
    return fit_factors(spec.model, c.path, str(run), args, c.schema_spec(), spec.ds_config, c.on_bad_record, c.split,
                       overwrite)


def _queries(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.data.schemas import SchemaSpec
    from lancet_ds.influence.queries import run_queries

    o = spec.stages["queries"]
    return run_queries(str(run), spec.queries, SchemaSpec(), spec.ds_config, k=o.k, damping=o.damping,
                       ihvp_rank=o.ihvp_rank, micro_batch=o.micro_batch, max_length=spec.max_length, seed=spec.seed,
                       model_dir=spec.model, overwrite=overwrite)


def _recall(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.recall.stage import run_recall

    o, c = spec.stages["recall"], spec.corpus
    return run_recall(str(run), c.path, c.schema_spec(), top_k=o.top_k, score_all=o.all, chunk_size=o.chunk_size,
                      on_bad_record=c.on_bad_record, split=c.split, overwrite=overwrite)


def _score(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.influence.score import run_scores

    o, c = spec.stages["score"], spec.corpus
    return run_scores(str(run), c.path, c.schema_spec(), spec.ds_config, micro_batch=o.micro_batch,
                      max_length=spec.max_length, on_bad_record=c.on_bad_record, split=c.split,
                      per_sublayer=o.per_sublayer, model_dir=spec.model, overwrite=overwrite)


def _correct(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.ibo.correct import run_correct

    return run_correct(str(run), spec.stages["correct"], spec.ds_config, spec.model, overwrite)


def _export(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.export import run_export

    return run_export(str(run), str(run / "model"), spec.stages["export"].max_shard_size)


def _evaluate(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.evaluation.evaluate import EvalArgs, run_evaluate

    o = _opts(spec, "evaluate")
    compare = o.pop("compare")
    return run_evaluate(str(run), EvalArgs(**o), spec.ds_config, sorted(compare.items()))


def _ekfac(spec: JobSpec, run: Path, overwrite: bool):
    """EK-FAC beside LinFAC for the report's PR curves: its own fit, IHVPs and scores on the same
    recalled candidates, under RUN_DIR/compare/ekfac."""
    sub = run / "compare" / "ekfac"
    copied = sub / "recall" / "stage_config.json"
    if dist_utils.is_main() and (not copied.exists() or copied.read_bytes() != (run / "recall" / "stage_config.json").read_bytes()):
        shutil.rmtree(sub / "recall", ignore_errors=True)
        shutil.copytree(run / "recall", sub / "recall")
    dist_utils.barrier()
    _fit(spec, sub, overwrite, method="ekfac")
    _queries(spec, sub, overwrite)
    return _score(spec, sub, overwrite)


def _report(spec: JobSpec, run: Path, overwrite: bool):
    from lancet_ds.report import write_report

    return write_report(run, spec)


def _corpus(spec: JobSpec) -> dict[str, Any]:
    return asdict(spec.corpus)


STAGES: tuple[Stage, ...] = (
    Stage("world", (), lambda s: {}, lambda s: dict(s.demo_world or {}), ("world",), _world,
          enabled=lambda s: s.demo_world is not None),
    Stage("fit", ("world",), lambda s: {"model": s.model, "corpus": s.corpus.path},
          lambda s: {"fit": _opts(s, "fit"), "corpus": _corpus(s)}, ("factors",), _fit),
    Stage("queries", ("fit",), lambda s: {"queries": s.queries},
          lambda s: {"queries": _opts(s, "queries"), "max_length": s.max_length, "seed": s.seed}, ("queries",), _queries),
    Stage("recall", ("queries",), lambda s: {"corpus": s.corpus.path},
          lambda s: {"recall": _opts(s, "recall"), "corpus": _corpus(s)}, ("recall",), _recall),
    Stage("score", ("queries", "recall"), lambda s: {"corpus": s.corpus.path},
          lambda s: {"score": _opts(s, "score"), "corpus": _corpus(s), "max_length": s.max_length}, ("scores",), _score),
    Stage("correct", ("score",), lambda s: {"validate_clean": s.stages["correct"].validate_clean},
          lambda s: {"correct": _opts(s, "correct")}, ("correct", "ref_logprobs", "selection.jsonl"), _correct),
    Stage("export", ("correct",), lambda s: {}, lambda s: {"export": _opts(s, "export")}, ("model", "export.json"),
          _export),
    Stage("evaluate", ("export",),
          lambda s: {k: getattr(s.stages["evaluate"], k) for k in ("clean", "prompts", "judge")}
          | {f"compare:{k}": v for k, v in s.stages["evaluate"].compare.items()},
          lambda s: {"evaluate": _opts(s, "evaluate")}, ("eval.json",), _evaluate),
    Stage("ekfac", ("recall",), lambda s: {"model": s.model, "corpus": s.corpus.path, "queries": s.queries},
          lambda s: {"fit": _opts(s, "fit"), "queries": _opts(s, "queries"), "score": _opts(s, "score"),
                     "corpus": _corpus(s), "max_length": s.max_length, "seed": s.seed},
          ("compare/ekfac",), _ekfac, enabled=lambda s: s.compare_ekfac),
    Stage("report", ("evaluate", "ekfac", "score", "correct"), lambda s: {}, lambda s: {},
          ("report.json", "report.md", "plots"), _report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
