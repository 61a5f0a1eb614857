"""`lancet-ds job validate` (also the first thing a job does): everything that can be checked in
seconds, before any expensive stage. Files exist and parse, the corpus and the queries fit their
schemas (the first `scan` records, or all), the model config and tokenizer load, the DeepSpeed config
agrees with the world size, and the run directory is writable and not locked. Every problem found is
reported at once, each with what to do."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.corpus import encode_samples, iter_samples
from lancet_ds.data.records import is_label
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.errors import BadInputError, ConfigError, LancetError
from lancet_ds.job.protocol import overlap_problems
from lancet_ds.job.spec import JobSpec
from lancet_ds.run_lock import RunLock, refuse_shared


def validate_job(spec: JobSpec, world_size: int, files: bool = True, check_lock: bool = True,
                 scan: int = 1000) -> list[str]:
    """Raise `ConfigError` (configuration problems) or `BadInputError` (data problems only) listing
    every problem; return notes on what was checked. `files=False` checks only the DeepSpeed config and
    the run directory (the demo job, before its world exists)."""
    config: list[str] = []
    data: list[str] = []
    notes: list[str] = []
    ds_config = _check_ds_config(spec.ds_config, world_size, config)
    if ds_config is not None:
        _check_correct_config(spec, ds_config, config)
    _check_run_dir(Path(spec.output), check_lock, config)
    if files:
        tokenizer = _check_model(spec.model, "model", config)
        for name, path in spec.stages["evaluate"].compare.items():
            _check_model(path, f"evaluate.compare.{name}", config, tokenizer=False)
        c = spec.corpus
        n = _check_records("corpus", c.path, c.schema, tokenizer, spec.max_length, c.split, scan,
                           c.on_bad_record, config, data, label=c.label_field)
        notes.append(f"corpus: {n} record(s) read" + (" (all)" if not scan else f" (first {scan} checked)"))
        q = spec.queries
        q = _check_records("queries", q.path, q.schema, tokenizer, spec.max_length, q.split, 0, q.on_bad_record,
                           config, data)
        notes.append(f"queries: {q} read")
        _check_role_files(spec, tokenizer, config, data)
        config += overlap_problems(spec)
        notes.append("roles: validation and evaluation files are disjoint from each other and from the queries")
    if config:
        raise ConfigError(_listing(config + data))
    if data:
        raise BadInputError(_listing(data))
    return notes


def _check_role_files(spec: JobSpec, tokenizer, config: list[str], data: list[str]) -> None:
    """The validation and evaluation files parse and fit their schemas; the judges exist."""
    c, ev = spec.stages["correct"], spec.stages["evaluate"]
    for field, path in (("evaluate.clean", ev.clean), ("evaluate.queries", ev.queries), ("evaluate.prompts", ev.prompts),
                        ("correct.validation_clean", c.validation_clean), ("correct.validation_queries", c.validation_queries),
                        ("correct.validation_prompts", c.validation_prompts)):
        if path:
            schema = SchemaSpec(response_field="prompt") if field.endswith("prompts") else SchemaSpec()
            _check_records(field, path, schema, tokenizer, spec.max_length, None, 0, "fail", config, data)
    for field, path in (("evaluate.judge", ev.judge), ("evaluate.reward_judge", ev.reward_judge),
                        ("correct.validation_judge", c.validation_judge), ("correct.positive_judge", c.positive_judge)):
        if path and not Path(path).exists():
            config.append(f"{field}: {path} not found; give the demo world's judge.json or an HF classifier "
                          "directory, or remove the key")


def _listing(problems: list[str]) -> str:
    return f"the job cannot run ({len(problems)} problem(s)):\n" + "\n".join(f"  - {p}" for p in problems)


def _check_ds_config(path: str, world_size: int, problems: list[str]) -> dict | None:
    """The DeepSpeed config at `path`, read once for every check of it (None when it does not load)."""
    from lancet_ds.modeling import load_ds_config, zero_stage

    try:
        cfg = load_ds_config(path)
    except ConfigError as exc:
        problems.append(str(exc))
        return None
    stage = zero_stage(cfg)
    if stage not in (0, 1, 2, 3):
        problems.append(f"{path}: zero_optimization.stage {stage} does not exist; use 1-3 (ds_configs/ has examples)")
    micro = cfg.get("train_micro_batch_size_per_gpu", 1)
    accum = cfg.get("gradient_accumulation_steps", 1)
    if "train_batch_size" in cfg and cfg["train_batch_size"] != micro * accum * world_size:
        problems.append(f"{path}: train_batch_size {cfg['train_batch_size']} ≠ micro batch {micro} × accumulation "
                        f"{accum} × {world_size} rank(s); remove train_batch_size (lancet_ds sets batch sizes per "
                        "stage) or make it agree")
    if cfg.get("bf16", {}).get("enabled") and cfg.get("fp16", {}).get("enabled"):
        problems.append(f"{path}: bf16 and fp16 are both enabled; enable one")
    optimizer = (cfg.get("optimizer") or {}).get("type")
    if optimizer is not None:  # DeepSpeed refuses these only when `correct` starts, after the stages before it
        problems += _optimizer_problems(path, optimizer, stage, bool(cfg.get("zero_allow_untested_optimizer")))
    return cfg


ZERO_TESTED_OPTIMIZERS = ("adam", "adamw", "adagrad", "lion", "muon")
"""The `optimizer.type`s whose optimizers DeepSpeed 0.19 lists as tested with ZeRO (`ZERO_SUPPORTED_OPTIMIZERS`)."""


def _optimizer_problems(path: str, name, stage: int, untested_allowed: bool) -> list[str]:
    """DeepSpeed's rules for `optimizer.type`: one of its own (any case) or a `torch.optim` class by name, and under
    ZeRO one it has tested there unless `zero_allow_untested_optimizer` is set."""
    import torch
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    if not isinstance(name, str) or not (name.lower() in DEEPSPEED_OPTIMIZERS or hasattr(torch.optim, name)):
        return [f"{path}: optimizer.type {name!r} is neither a DeepSpeed optimizer nor one of torch.optim's; use e.g. "
                "AdamW (ds_configs/ has examples)"]
    if stage >= 1 and not untested_allowed and name.lower() not in ZERO_TESTED_OPTIMIZERS:
        return [f"{path}: optimizer.type {name!r} is not one DeepSpeed has tested with ZeRO "
                f"({', '.join(ZERO_TESTED_OPTIMIZERS)}), and DeepSpeed refuses it unless "
                "zero_allow_untested_optimizer is true; use e.g. AdamW, or set that key"]
    return []


def _check_correct_config(spec: JobSpec, ds_config: dict, problems: list[str]) -> None:
    """What the correct stage cannot run under the job's DeepSpeed config `ds_config` (`ibo.recipe.config_problems`:
    ZeRO stage 0, or a config whose update `term_grad_norms_every`'s extra passes would change): refused here, not
    after the stages before `correct` have run."""
    from lancet_ds.ibo.recipe import config_problems

    problems.extend(config_problems(ds_config, spec.ds_config, spec.stages["correct"].term_grad_norms_every))


def _check_run_dir(run: Path, check_lock: bool, problems: list[str]) -> None:
    """Writable (or creatable), trusted and unlocked; checked without creating or writing anything."""
    existing = next(p for p in (run, *run.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "not a directory" if not existing.is_dir() else "not writable"
        problems.append(f"output {run}: {existing} is {what}; choose another --run-dir or fix its permissions")
        return
    if run.exists():
        try:
            refuse_shared(run)
        except ConfigError as exc:
            problems.append(f"output {exc}")
    if check_lock and RunLock(run).held_by_other():
        problems.append(f"output {run}: another run holds its lock now; wait for it or choose another --run-dir")


def _check_model(path: str, field: str, problems: list[str], tokenizer: bool = True):
    from transformers import AutoConfig

    from lancet_ds.modeling import check_model_dir, load_tokenizer

    try:
        check_model_dir(path, option=f"{field} in the job file")
        AutoConfig.from_pretrained(path)
        return load_tokenizer(path) if tokenizer else None
    except LancetError as exc:
        problems.append(f"{field}: {exc}")
    except (OSError, ValueError) as exc:
        problems.append(f"{field}: {path}: the model config does not load ({exc}); point it at a save_pretrained directory")
    return None


def _check_records(field: str, path: str, schema: SchemaSpec, tokenizer, max_length: int, split, scan: int,
                   policy: str, config: list[str], data: list[str], label: str | None = None) -> int:
    if not path or not Path(path).exists():
        config.append(f"{field}: {path or '(missing)'} not found; fix the path in the job file")
        return 0
    sink = RejectSink("fail", collect=True)
    samples = iter_samples(path, schema, sink, split)
    if scan:
        samples = itertools.islice(samples, scan)
    n, labelled, odd = 0, 0, None
    try:
        pairs = encode_samples(samples, tokenizer, max_length, sink) if tokenizer is not None else ((s, None) for s in samples)
        for s, _ in pairs:
            n += 1
            if label is not None and label in s.meta:
                labelled += 1
                if odd is None and not is_label(s.meta[label]):
                    odd = (s.id, s.meta[label])
    except LancetError as exc:  # unreadable file, unknown format
        data.append(f"{field}: {exc}")
        return n
    if sink.rejects and policy == "fail":
        shown = "; ".join(f"{r['location']}: {r['reason']}" for r in sink.rejects[:3])
        more = f" (and {len(sink.rejects) - 3} more)" if len(sink.rejects) > 3 else ""
        skip = (f", or set {field}.on_bad_record: skip to set them aside" if field in ("corpus", "queries")
                else " (this file is always read under on_bad_record: fail)")
        data.append(f"{field}: {len(sink.rejects)} bad record(s): {shown}{more}. Fix them{skip} "
                    "(`lancet-ds data inspect` lists them all)")
    if n == 0 and not (sink.rejects and policy == "fail"):
        data.append(f"{field}: {path} holds no usable record; check the file and its schema options")
    if label is not None and n and labelled == 0:
        config.append(f"corpus.label_field: no record carries {label!r}; remove the key or fix the field name")
    if odd is not None:  # bool("false") is True: every sample would count as a culprit in the report
        config.append(f"corpus.label_field: {label!r} must be true or false (or 1 / 0) in every record; record "
                      f"{odd[0]!r} of {path} has {odd[1]!r}. Fix the field, or remove the key")
    return n
