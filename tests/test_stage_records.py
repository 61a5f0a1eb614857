"""Stage records compare contents, not locations (DESIGN.md section 2): a stage's fingerprint leaves out where its
inputs and its run directory lie (`fingerprint.path_free`), so a run moved or copied with its inputs keeps its
results; a record written before that (its fingerprint over paths too) is still reused while nothing moved. The
job end to end, moved between a kill and its resumption, is in tests/test_job.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.export import relocated
from lancet_ds.fingerprint import json_fingerprint, model_files_fingerprint, model_fingerprint, path_free
from lancet_ds.run_dir import RunDir
from lancet_ds.stage_guard import finished, record, stage_fingerprint


def test_path_free_takes_out_the_inputs_and_the_run_directory_only(tmp_path):
    tmp_path = tmp_path.resolve()
    corpus = tmp_path / "data" / "train.jsonl"
    config = {"corpus": {"path": str(corpus), "sha256": "abc"}, "args": {"judge": "data/judge.json", "fisher": "sampled",
              "other": str(tmp_path / "elsewhere.jsonl")},
              "models": [["corrected", str(tmp_path / "run" / "model"), "fp"]], "export": {"run": str(tmp_path / "run")}}
    free = path_free(config, [corpus, "data/judge.json"], tmp_path / "run")
    assert free == {"corpus": {"path": "<input>", "sha256": "abc"},
                    "args": {"judge": "<input>", "fisher": "sampled", "other": str(tmp_path / "elsewhere.jsonl")},
                    "models": [["corrected", "<run>/model", "fp"]], "export": {"run": "<run>"}}
    # a relative input is known by its resolved form too; a folder beside the run whose name extends it is not inside
    assert path_free({"a": str(Path("data/judge.json").resolve()), "b": str(tmp_path / "run2")}, ["data/judge.json"],
                     tmp_path / "run") == {"a": "<input>", "b": str(tmp_path / "run2")}


def _fit_like(root: Path) -> tuple[Path, dict, tuple]:
    """A stage's output folder under `root/run` and a record like fit's: a corpus and a model by path and content."""
    corpus, model = root / "world" / "train.jsonl", root / "world" / "impure"
    config = {"args": {"num_samples": 8}, "corpus": DataSpec(str(corpus)).fingerprint(),
              "model_fingerprint": model_fingerprint(model), "model_dir": str(model.resolve()),
              "model_files": model_files_fingerprint(model)}
    return root / "run" / "factors", config, (corpus, model)


def _fingerprint(out: Path, config: dict, inputs: tuple) -> str:
    return stage_fingerprint(out, config, inputs, since=("model_files",))


def _world(root: Path) -> None:
    (root / "world" / "impure").mkdir(parents=True)
    (root / "world" / "train.jsonl").write_text('{"id": "a", "prompt": "p", "response": "r"}\n')
    (root / "world" / "impure" / "config.json").write_text("{}")
    (root / "world" / "impure" / "model.safetensors").write_bytes(b"weights")


def test_a_finished_stage_moved_with_its_inputs_is_reused_and_a_changed_input_still_refused(tmp_path):
    _world(tmp_path / "a")
    out, config, inputs = _fit_like(tmp_path / "a")
    fingerprint = _fingerprint(out, config, inputs)
    out.mkdir(parents=True)
    (out / "index.json").write_text("{}")
    record(out, fingerprint, config)
    shutil.move(tmp_path / "a", tmp_path / "b")

    out, config, inputs = _fit_like(tmp_path / "b")
    assert config["model_dir"] == str((tmp_path / "b" / "world" / "impure").resolve())  # the record names the new place...
    assert _fingerprint(out, config, inputs) == fingerprint  # ...and the same fingerprint
    assert finished(out, "index.json", _fingerprint(out, config, inputs), False, "fit", config)

    (tmp_path / "b" / "world" / "impure" / "tokenizer_config.json").write_text('{"chat_template": "other"}')
    out, config, inputs = _fit_like(tmp_path / "b")  # the same weights with another tokenizer: not the same model
    with pytest.raises(ConfigError, match=r"model_files: "):
        finished(out, "index.json", _fingerprint(out, config, inputs), False, "fit", config)
    (tmp_path / "b" / "world" / "impure" / "tokenizer_config.json").unlink()

    (tmp_path / "b" / "world" / "train.jsonl").write_text('{"id": "a", "prompt": "p", "response": "other"}\n')
    out, config, inputs = _fit_like(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"holds a fit result made with other options or inputs \(corpus.path: .*"
                                          r"corpus.sha256: "):
        finished(out, "index.json", _fingerprint(out, config, inputs), False, "fit", config)


def test_a_record_fingerprinted_with_its_paths_is_reused_until_it_moves(tmp_path):
    """What lancet_ds wrote before paths were left out: the fingerprint of the whole record."""
    _world(tmp_path / "a")
    out, config, inputs = _fit_like(tmp_path / "a")
    out.mkdir(parents=True)
    (out / "index.json").write_text("{}")
    old = {k: v for k, v in config.items() if k != "model_files"}  # older records had no model_files
    record(out, json_fingerprint(old), old)
    assert _fingerprint(out, config, inputs) == json_fingerprint(old)
    assert finished(out, "index.json", _fingerprint(out, config, inputs), False, "fit", config)

    shutil.move(tmp_path / "a", tmp_path / "b")
    out, config, inputs = _fit_like(tmp_path / "b")
    with pytest.raises(ConfigError, match=r"\(corpus.path: .*; model_dir: .*\)\. Rerun with --overwrite"):
        finished(out, "index.json", _fingerprint(out, config, inputs), False, "fit", config)


def test_an_export_inside_a_moved_run_follows_it(tmp_path):
    tmp_path = tmp_path.resolve()
    old, new = tmp_path / "old", RunDir.of(tmp_path / "new")
    inside = {"path": str(old / "model"), "run": str(old), "tag": "best"}
    assert relocated(inside, new) == {"path": str(tmp_path / "new" / "model"), "run": str(tmp_path / "new"), "tag": "best"}
    outside = {"path": str(tmp_path / "shipped"), "run": str(old), "tag": "best"}
    assert relocated(outside, new) is outside  # still another run's export: replacing it needs --overwrite
    here = {"path": str(tmp_path / "new" / "model"), "run": str(tmp_path / "new")}
    assert relocated(here, new) is here


def test_a_stage_command_s_recorded_default_that_moved_away_is_refused_with_where_to_point_it(tmp_path):
    """Stages after `fit` default to the model the factors were fitted on: gone from there, the command says so."""
    import subprocess
    import sys

    run = tmp_path / "run"
    (run / "factors").mkdir(parents=True)
    record(run / "factors", "f", {"model_dir": str(tmp_path / "gone" / "impure")})
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"id": "q", "prompt": "p", "response": "r"}\n')
    proc = subprocess.run([sys.executable, "-m", "lancet_ds", "queries", "--run", str(run), "--queries", str(queries)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert (f"{run / 'factors' / 'stage_config.json'}: the model was read from {tmp_path / 'gone' / 'impure'}, which "
            "is gone (moved?). Pass --model with where it lies now") in " ".join(proc.stderr.split())
