"""The job file (`--job JOB.yaml`, documented in the README): the model, its training corpus, the
influence queries, the run directory, and any stage option. Command-line `--set KEY=VALUE` overrides
any key (dotted path, YAML value); `--run-dir`, `--config` and `--seed` override `output`, `ds_config`
and `seed`. Relative paths in the file are relative to the file's own directory.

Stage options are the stage commands' own argument dataclasses (`FitArgs`, `CorrectArgs`, `EvalArgs`)
and the small ones below, so a job and the stage commands cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.errors import ConfigError
from lancet_ds.evaluation.evaluate import EvalArgs
from lancet_ds.ibo.correct import CorrectArgs
from lancet_ds.influence.fit import FitArgs

DEFAULT_DS_CONFIG = str(Path(__file__).resolve().parent.parent.parent / "ds_configs" / "zero3.json")


@dataclass
class CorpusSpec:
    """The training corpus and how to read it (DESIGN.md section 5)."""

    path: str = ""
    """JSONL, JSON, parquet, or a `datasets` directory."""
    schema: str = "generic"
    """generic, hh, beavertails or pku."""
    prompt_field: str = "prompt"
    response_field: str = "response"
    id_field: str = "id"
    hh_side: str = "chosen"
    pku_response: str = "both"
    split: str | None = None
    """Split of a DatasetDict directory."""
    on_bad_record: str = "fail"
    """fail: stop at the first bad record with file:line; skip: set it aside in the stage's rejects.jsonl."""
    label_field: str | None = None
    """A boolean field marking known culprits (e.g. `contaminated`): the report then measures recall (PR-AUC)."""

    def schema_spec(self) -> SchemaSpec:
        return SchemaSpec(name=self.schema, prompt_field=self.prompt_field, response_field=self.response_field,
                          id_field=self.id_field, hh_side=self.hh_side, pku_response=self.pku_response)


@dataclass
class QueriesOptions:
    k: str = "10"
    """k-means query batches; 'all' = one query per batch."""
    damping: float | None = None
    """λ for every sublayer (default 0.1 × mean curvature diagonal)."""
    ihvp_rank: int | None = None
    micro_batch: int = 8


@dataclass
class RecallOptions:
    top_k: int = 100
    all: bool = False
    """Every corpus sample is a candidate (no recall)."""
    chunk_size: int = 10000


@dataclass
class ScoreOptions:
    micro_batch: int = 8
    per_sublayer: bool = False


@dataclass
class ExportOptions:
    max_shard_size: str = "2GB"


@dataclass
class EvaluateOptions(EvalArgs):
    compare: dict[str, str] = field(default_factory=dict)
    """NAME: model directory of other models to measure beside the impure and corrected ones."""


STAGE_OPTIONS = {"fit": FitArgs, "queries": QueriesOptions, "recall": RecallOptions, "score": ScoreOptions,
                 "correct": CorrectArgs, "export": ExportOptions, "evaluate": EvaluateOptions}
CHOICES = {
    ("corpus", "schema"): ("generic", "hh", "beavertails", "pku"),
    ("corpus", "on_bad_record"): ("fail", "skip"),
    ("corpus", "hh_side"): ("chosen", "rejected"),
    ("corpus", "pku_response"): ("0", "1", "both"),
    ("fit", "method"): ("linfac", "ekfac"),
    ("fit", "fisher"): ("sampled", "empirical"),
    ("fit", "fit_responses"): ("generate", "corpus"),
    ("fit", "dtype"): ("float32", "float64"),
    ("correct", "method"): ("ibo", "pbo", "ga"),
    ("correct", "selection"): ("topk", "pareto"),
    ("correct", "cor_form"): ("dpo", "paper"),
}
SHARED = ("max_length", "seed")  # top-level keys every stage that has the field inherits


@dataclass
class JobSpec:
    model: str
    corpus: CorpusSpec
    queries: str
    output: str
    ds_config: str = DEFAULT_DS_CONFIG
    max_length: int = 512
    seed: int = 0
    compare_ekfac: bool = False
    """Also fit EK-FAC and score with it (report: PR curves of both)."""
    demo_world: dict[str, Any] | None = None
    """{size, seed}: build the demo world first (the embedded default job)."""
    stages: dict[str, Any] = field(default_factory=dict)
    """Stage name → its options dataclass."""

    def resolved(self) -> dict[str, Any]:
        """Everything the job will do, as plain data (manifest.json and `job validate`)."""
        out = {k: v for k, v in asdict(self).items() if k != "stages"}
        out["stages"] = {name: asdict(opts) for name, opts in self.stages.items()}
        return out


def load_job_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: job file not found. Write one as the README's 'Job file' section shows.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}). Fix the job file.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a job file must be a YAML mapping (model, corpus, queries, output, ...).")
    return _relative_to(raw, p.resolve().parent)


def _relative_to(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    raw = copy.deepcopy(raw)

    def fix(value):
        return str(base / value) if isinstance(value, str) and value and not Path(value).is_absolute() else value

    for key in ("model", "queries", "output", "ds_config"):
        if key in raw:
            raw[key] = fix(raw[key])
    if isinstance(raw.get("corpus"), str):
        raw["corpus"] = {"path": raw["corpus"]}
    if isinstance(raw.get("corpus"), dict) and "path" in raw["corpus"]:
        raw["corpus"]["path"] = fix(raw["corpus"]["path"])
    stages = raw.get("stages") or {}
    for key in ("clean", "prompts", "judge"):
        if isinstance(stages.get("evaluate"), dict) and key in stages["evaluate"]:
            stages["evaluate"][key] = fix(stages["evaluate"][key])
    if isinstance(stages.get("correct"), dict) and "validate_clean" in stages["correct"]:
        stages["correct"]["validate_clean"] = fix(stages["correct"]["validate_clean"])
    if isinstance(stages.get("evaluate"), dict) and isinstance(stages["evaluate"].get("compare"), dict):
        stages["evaluate"]["compare"] = {k: fix(v) for k, v in stages["evaluate"]["compare"].items()}
    return raw


def apply_overrides(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """`--set a.b.c=VALUE` (VALUE read as YAML) on the raw job mapping."""
    raw = copy.deepcopy(raw)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set stages.correct.steps=200")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a mapping in the job.")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def build_spec(raw: dict[str, Any], where: str = "job") -> JobSpec:
    """Check every key and value of the raw mapping and build the spec; one error lists every problem."""
    problems: list[str] = []
    top = {f.name for f in dataclasses.fields(JobSpec)}
    for key in raw:
        if key not in top:
            problems.append(f"unknown key {key!r} (known: {sorted(top)})")
    for key in ("model", "corpus", "queries", "output"):
        if not raw.get(key):
            problems.append(f"missing {key!r}")
    corpus = _build("corpus", CorpusSpec, raw.get("corpus") or {}, {}, problems)
    stages_raw = raw.get("stages") or {}
    if not isinstance(stages_raw, dict):
        problems.append("'stages' must be a mapping of stage name to options")
        stages_raw = {}
    for name in stages_raw:
        if name not in STAGE_OPTIONS:
            problems.append(f"unknown stage {name!r} under 'stages' (known: {list(STAGE_OPTIONS)})")
    shared = {k: raw[k] for k in SHARED if k in raw}
    stages = {name: _build(name, cls, stages_raw.get(name) or {}, shared, problems)
              for name, cls in STAGE_OPTIONS.items()}
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems) + ". Fix the job file (README: 'Job file').")
    kw = {k: v for k, v in raw.items() if k not in ("corpus", "stages")}
    try:
        return JobSpec(corpus=corpus, stages=stages, **kw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}. Fix the job file.") from None


def _build(name: str, cls, values: Any, shared: dict[str, Any], problems: list[str]):
    if not isinstance(values, dict):
        problems.append(f"{name!r} must be a mapping")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in shared.items() if k in fields}
    for key, value in values.items():
        if key not in fields:
            problems.append(f"{name}.{key}: unknown option (known: {sorted(fields)})")
            continue
        default = fields[key].default
        if default is not None and default is not dataclasses.MISSING and not _same_kind(value, default):
            problems.append(f"{name}.{key}: expected {type(default).__name__}, got {value!r}")
            continue
        allowed = CHOICES.get((name, key))
        if allowed and str(value) not in allowed:
            problems.append(f"{name}.{key}: {value!r} is not one of {list(allowed)}")
            continue
        kw[key] = str(value) if allowed or isinstance(default, str) else value
    return cls(**kw)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    return True
