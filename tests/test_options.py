"""One declaration per option: every stage command's options and its job-file keys come from the stage's
own dataclass (same names, same defaults, docstrings as --help); one `validate()` refuses bad values for
the command line and the job alike; the shipped example job and the README's job block load."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from conftest import REPO, cli
from lancet_ds.cli import STAGE_COMMANDS
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.job.spec import STAGE_OPTIONS, apply_overrides, build_spec, load_job_file
from lancet_ds.options import build, defaults, field_docs

# what a stage command takes besides its stage options: where to work, what to read, how to run
RUN_LEVEL = {"run_dir", "out_dir", "data_path", "queries_path", "model_dir", "ds_config", "overwrite"}
DATA_OPTIONS = {f.name for f in dataclasses.fields(SchemaSpec)} | {"split", "on_bad_record"}


def cli_defaults(stage: str) -> dict:
    params = {p.name: p.default for p in STAGE_COMMANDS[stage].params}
    return {k: v for k, v in params.items() if k not in RUN_LEVEL | DATA_OPTIONS}


def job_value(value):
    """A click default in the job's terms: repeatable options are lists, NAME=VALUE ones mappings."""
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("stage", sorted(STAGE_OPTIONS))
def test_cli_options_and_job_keys_are_the_same_set_with_the_same_defaults(stage):
    job = defaults(STAGE_OPTIONS[stage])
    got = cli_defaults(stage)
    assert set(got) == set(job)
    for name, value in job.items():
        if isinstance(value, dict):
            assert got[name] == (), name
        else:
            assert job_value(got[name]) == value, name


@pytest.mark.parametrize("cls", list(STAGE_OPTIONS.values()) + [SchemaSpec, DataSpec])
def test_every_option_has_a_help_text(cls):
    docs = field_docs(cls)
    assert {f.name for f in dataclasses.fields(cls)} <= set(docs), cls.__name__


def test_help_shows_the_field_docstrings_and_choices():
    out = cli(["correct", "--help"]).stdout
    assert "topk: samples per side and query batch" in " ".join(out.split())
    assert "[ibo|pbo|ga|llm_ul|sft_er|dpo_er]" in out and "--top-k" in out and "--cor-form" in out
    out = cli(["queries", "--help"]).stdout
    assert "--batches" in out and "--k " not in out


def test_one_error_lists_every_bad_value_of_a_job():
    raw = {"model": "m", "corpus": "c.jsonl", "queries": "q.jsonl", "output": "o", "max_length": "abc",
           "compare_ekfac": "no",
           "stages": {"correct": {"steps": -10, "lr": -1, "top_k": -3, "save_every": 0, "method": "sgd"},
                      "score": {"micro_batch": 0}, "evaluate": {"compare": "oops"}, "queries": {"batches": "x"}}}
    with pytest.raises(ConfigError) as err:
        build_spec(raw)
    msg = str(err.value)
    for problem in ("max_length: expected an integer, got 'abc'", "compare_ekfac: expected true or false, got 'no'",
                    "correct.steps: must be ≥ 1, got -10", "correct.lr: must be > 0, got -1.0",
                    "correct.top_k: must be ≥ 1, got -3", "correct.save_every: must be ≥ 1, got 0",
                    "correct.method: 'sgd' is not one of ['ibo', 'pbo', 'ga', 'llm_ul', 'sft_er', 'dpo_er']", "score.micro_batch: must be > 0, got 0",
                    "evaluate.compare: expected a mapping, got 'oops'", "queries.batches: must be a whole number"):
        assert problem in msg, problem


def test_nan_and_infinity_are_refused_wherever_an_option_is_set(tmp_path):
    """A `.nan` in a job file or `--set`, or `nan` on a command line, passed `lr > 0` (NaN compares false) and the
    correction trained on NaN, exported a NaN model and exited 0; so did an infinite rate or weight. An unbounded
    limit stays allowed. A --set value that is not YAML was a traceback."""
    raw = {"model": "m", "corpus": "c.jsonl", "queries": "q.jsonl", "output": "o"}
    with pytest.raises(ConfigError) as err:
        build_spec(apply_overrides(raw, ["stages.correct.lr=.inf", "stages.correct.beta=.nan", "stages.queries.damping=.inf",
                                         "stages.correct.lam_prox=.inf", "stages.correct.epsilon=-.inf"]))
    for problem in ("correct.lr: must be finite, got inf", "correct.beta: expected a number, not NaN, got nan",
                    "queries.damping: must be finite, got inf", "correct.lam_prox: must be finite, got inf",
                    "correct.epsilon: must be finite, got -inf"):
        assert problem in str(err.value), problem
    spec = build_spec(apply_overrides(raw, ["stages.correct.max_ppl_increase=.inf", "stages.correct.neutral_threshold=.inf"]))
    assert spec.stages["correct"].max_ppl_increase == spec.stages["correct"].neutral_threshold == float("inf")
    proc = cli(["correct", "--run", str(tmp_path), "--lr", "nan", "--model", "m"], check=False)
    assert proc.returncode == 4 and "lr: expected a number, not NaN, got nan" in proc.stderr
    with pytest.raises(ConfigError, match=r"--set 'stages.correct.steps=\[1': its value is not YAML .*quote a string"):
        apply_overrides(raw, ["stages.correct.steps=[1"])


def test_shared_keys_reach_every_stage_that_has_them_unless_the_stage_sets_its_own():
    spec = build_spec({"model": "m", "corpus": {"path": "c", "schema": "hh"}, "queries": "q", "output": "o",
                       "max_length": 96, "seed": 3, "stages": {"score": {"max_length": 64}}})
    assert spec.stages["fit"].max_length == 96 and spec.stages["fit"].seed == 3
    assert spec.stages["score"].max_length == 64 and spec.stages["correct"].seed == 3
    assert spec.corpus.schema == SchemaSpec(name="hh") and spec.queries == DataSpec("q")


def test_the_command_line_refuses_bad_values_with_exit_4(tmp_path):
    proc = cli(["correct", "--run", str(tmp_path), "--steps", "-10", "--save-every", "0", "--model", "m"], check=False)
    assert proc.returncode == 4
    assert "command line: steps: must be ≥ 1, got -10; save_every: must be ≥ 1, got 0" in proc.stderr


def test_the_shipped_example_job_loads():
    path = REPO / "launch" / "example_job.yaml"
    assert path.read_text().startswith("# deepspeed launch/correct.py --config ds_configs/zero3.json --job ")
    spec = build_spec(load_job_file(path), where=str(path))
    assert spec.corpus.label_field == "contaminated" and spec.stages["correct"].top_k == 16
    assert Path(spec.model).resolve() == (REPO / "runs" / "demo" / "world" / "impure").resolve()


def test_the_readme_job_block_loads(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n(# deepspeed launch/correct.py.*?)```", readme, re.S).group(1)
    path = tmp_path / "job.yaml"
    path.write_text(block)
    spec = build_spec(load_job_file(path), where="README job block")
    assert spec.stages["queries"].batches == "10" and spec.stages["export"].max_shard_size == "2GB"
    assert spec.stages["correct"].beta is None and spec.resolved()["stages"]["correct"]["beta"] == 1.0  # as used


def test_nested_data_specs_are_checked_too():
    with pytest.raises(ConfigError, match=r"corpus.schema.name: 'tsv' is not one of"):
        build(DataSpec, {"path": "x", "schema": {"name": "tsv"}}, "corpus")


def test_the_default_demo_job_lets_into_d_plus_only_what_the_worlds_harm_judge_flags(tmp_path):
    from lancet_ds.job.demo import demo_job

    correct = demo_job(str(tmp_path), "default")["stages"]["correct"]
    assert correct["positive_judge"] == str(tmp_path / "world" / "judge.json") == correct["validation_judge"]
    assert correct["judge_bars_negative"] is True  # and D⁻ only from what it does not flag
    assert correct["neutral_likelihood"] == 2.0  # and the likelihood of the neutral samples it passes raised
    tiny = demo_job(str(tmp_path), "tiny")["stages"]["correct"]
    assert not {"positive_judge", "judge_bars_negative", "neutral_likelihood"} & set(tiny)  # its tests' plan: off


def test_set_reaches_inside_a_shorthand_and_says_how_to_set_a_plain_value():
    """`queries: PATH` is the shorthand of {path: PATH}: `--set queries.path=...` overrides it (the demo
    default writes the shorthand); a dotted key through a plain value names the key to set whole."""
    raw = {"model": "m", "queries": "q.jsonl", "stages": {"correct": {"steps": 3}}}
    got = apply_overrides(raw, ["queries.path=other.jsonl", "stages.correct.steps=5"])
    assert got["queries"] == {"path": "other.jsonl"} and got["stages"]["correct"]["steps"] == 5
    assert raw["queries"] == "q.jsonl"  # the caller's mapping is left as it was
    with pytest.raises(ConfigError, match=r"model is 'm' in the job, not a mapping; set it whole instead: --set model=VALUE"):
        apply_overrides(raw, ["model.path=x"])
