"""The job file (`--job JOB.yaml`, documented in the README): the model, its training corpus, the
influence queries, the run directory, and any stage option. Command-line `--set KEY=VALUE` overrides
any key (dotted path, YAML value); `--run-dir`, `--config` and `--seed` override `output`, `ds_config`
and `seed`. Relative paths in the file are relative to the file's own directory.

`stages.<name>` holds the options of stage `name`: the fields of that stage command's own options
dataclass (`STAGE_OPTIONS`), type-checked and validated by the same `lancet_ds.options.build` the
command line uses, so a job and the stage commands cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lancet_ds.data.spec import CorpusSpec, DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.evaluation.evaluate import JUDGED_FILES, EvalArgs
from lancet_ds.export import ExportArgs
from lancet_ds.ibo.correct import FILE_OPTIONS, CorrectArgs
from lancet_ds.influence.fit import FitArgs
from lancet_ds.influence.queries import QueriesArgs
from lancet_ds.influence.score import ScoreArgs
from lancet_ds.options import at_least, build, recorded
from lancet_ds.packaged import DEFAULT_DS_CONFIG
from lancet_ds.recall.stage import RecallArgs

STAGE_OPTIONS = {"fit": FitArgs, "queries": QueriesArgs, "recall": RecallArgs, "score": ScoreArgs,
                 "correct": CorrectArgs, "export": ExportArgs, "evaluate": EvalArgs}
"""`stages.<name>` of a job file: exactly the fields of the stage command's own options dataclass."""
SHARED = ("max_length", "seed", "memory_budget")  # top-level keys every stage that has the field inherits


@dataclass
class JobSpec:
    """A job: the model, its training corpus, the influence queries, the run directory, stage options."""

    model: str
    """The impure model: a Hugging Face model directory (save_pretrained)."""
    corpus: CorpusSpec
    """The training corpus: a path, or a mapping {path, schema, split, on_bad_record, label_field}."""
    queries: DataSpec
    """The influence queries: a path, or a mapping {path, schema, split, on_bad_record}."""
    output: str
    """The run directory."""
    ds_config: str = DEFAULT_DS_CONFIG
    """DeepSpeed JSON config."""
    max_length: int = 512
    """Tokens per sample for every stage that has the option (unless the stage sets its own)."""
    seed: int = 0
    """Seed for every stage that has the option (unless the stage sets its own)."""
    memory_budget: str | None = None
    """Per-rank memory (e.g. 80GB) for fit, queries and score (unless the stage sets its own): the job plans
    each stage first (manifest.json `plan`) and refuses, before any work, one that cannot fit."""
    compare_ekfac: bool = False
    """Also fit EK-FAC and score with it (report: PR curves of both)."""
    demo_world: dict[str, Any] | None = None
    """{size, seed}: build the demo world first (the embedded default job)."""
    stages: dict[str, Any] = field(default_factory=dict)
    """Stage name → its options dataclass."""

    def validate(self) -> list[str]:
        return at_least(self, "max_length", 2)

    def resolved(self) -> dict[str, Any]:
        """Everything the job will do, as plain data (manifest.json and `job validate`)."""
        out = {k: v for k, v in asdict(self).items() if k != "stages"}
        out["stages"] = {name: recorded(opts) for name, opts in self.stages.items()}
        return out


def load_job_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: job file not found. Write one as the README's 'Jobs on your own model and "
                          "data' section shows.")
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

    raw = _shorthands(raw)
    for key in ("model", "output", "ds_config"):
        if key in raw:
            raw[key] = fix(raw[key])
    for key in ("corpus", "queries"):
        if isinstance(raw.get(key), dict) and "path" in raw[key]:
            raw[key]["path"] = fix(raw[key]["path"])
    stages = raw.get("stages") or {}
    for key in JUDGED_FILES:
        if isinstance(stages.get("evaluate"), dict) and key in stages["evaluate"]:
            stages["evaluate"][key] = fix(stages["evaluate"][key])
    for key in FILE_OPTIONS:
        if isinstance(stages.get("correct"), dict) and key in stages["correct"]:
            stages["correct"][key] = fix(stages["correct"][key])
    if isinstance(stages.get("fit"), dict) and "fit_set_from" in stages["fit"]:  # a run directory
        stages["fit"]["fit_set_from"] = fix(stages["fit"]["fit_set_from"])
    if isinstance(stages.get("evaluate"), dict) and isinstance(stages["evaluate"].get("compare"), dict):
        stages["evaluate"]["compare"] = {k: fix(v) for k, v in stages["evaluate"]["compare"].items()}
    return raw


def apply_overrides(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """`--set a.b.c=VALUE` (VALUE read as YAML) on the raw job mapping. The shorthands (`queries: PATH`) are
    expanded first, so `--set queries.path=FILE` works whichever form the job (or the demo default) wrote."""
    raw = _shorthands(raw)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set stages.correct.steps=200")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                whole = ".".join(parts[:i + 1])
                raise ConfigError(f"--set {item!r}: {whole} is {node!r} in the job, not a mapping; "
                                  f"set it whole instead: --set {whole}=VALUE")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())
            raise ConfigError(f"--set {item!r}: its value is not YAML ({problem}); quote a string, or write a list "
                              "as [a, b] and a mapping as {k: v}") from None
    return raw


def build_spec(raw: dict[str, Any], where: str = "job", sets: tuple[str, ...] = ()) -> JobSpec:
    """Check every key and value of the raw mapping and build the spec; one error lists every problem (with
    `sets`, the --set values applied to it, it says to look there too)."""
    problems: list[str] = []
    raw = _shorthands(raw)
    top = {f.name for f in dataclasses.fields(JobSpec)}
    problems += [f"unknown key {key!r} (known: {sorted(top)})" for key in raw if key not in top]
    stages_raw = raw.get("stages") or {}
    if not isinstance(stages_raw, dict):
        problems.append("'stages' must be a mapping of stage name to options")
        stages_raw = {}
    problems += [f"unknown stage {name!r} under 'stages' (known: {list(STAGE_OPTIONS)})"
                 for name in stages_raw if name not in STAGE_OPTIONS]
    spec = build(JobSpec, {k: v for k, v in raw.items() if k in top and k != "stages"}, "", problems)
    for name, cls in STAGE_OPTIONS.items():
        values = stages_raw.get(name) or {}
        if isinstance(values, dict) and spec is not None:
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {**{k: getattr(spec, k) for k in SHARED if k in fields and k in raw}, **values}
        stage = build(cls, values, f"stages.{name}", problems)
        if spec is not None:
            spec.stages[name] = stage
    if problems:
        fix = "the job file" + (f" or the --set values ({', '.join(sets)})" if sets else "")
        raise ConfigError(f"{where}: " + "; ".join(problems) + f". Fix {fix} (README: 'Jobs on your own model "
                          "and data').")
    return spec


def _shorthands(raw: dict[str, Any]) -> dict[str, Any]:
    """`corpus: PATH` / `queries: PATH` for {path: PATH}, and `schema: NAME` for {name: NAME}."""
    raw = copy.deepcopy(raw)
    for key in ("corpus", "queries"):
        if isinstance(raw.get(key), str):
            raw[key] = {"path": raw[key]}
        if isinstance(raw.get(key), dict) and isinstance(raw[key].get("schema"), str):
            raw[key]["schema"] = {"name": raw[key]["schema"]}
    return raw
