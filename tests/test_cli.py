"""The command line: help, launcher compatibility (--local_rank), and `data inspect`."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, cli, launch, write_jsonl


def test_help_lists_the_subcommands():
    out = cli(["--help"]).stdout
    for name in ("data", "demo-world", "train"):
        assert name in out


def test_launcher_local_rank_is_accepted():
    assert "inspect" in cli(["--local_rank=0", "data", "--help"]).stdout


def test_data_inspect_reports_counts_and_lengths(tmp_path, tiny_model_dir, world_texts):
    p = write_jsonl(tmp_path / "c.jsonl", world_texts.train[:20])
    out = cli(["data", "inspect", str(p), "--model", str(tiny_model_dir)]).stdout
    assert "samples" in out and "20" in out
    assert "tokens per sample" in out and "response tokens" in out
    assert "category (20)" in out and "contaminated (20)" in out


def test_data_inspect_lists_every_bad_record_and_exits_3(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"prompt": "a", "response": "b"}\n{oops\n{"prompt": "a"}\n')
    proc = cli(["data", "inspect", str(p)], check=False)
    assert proc.returncode == 3
    assert f"bad record {p}:2: malformed JSON (Expecting property name enclosed in double quotes at column 2)" in proc.stdout
    assert f"bad record {p}:3: missing field 'response'" in proc.stdout
    assert f"2 bad record(s) under on_bad_record=fail: the stages would stop at {p}:2" in proc.stderr
    assert cli(["data", "inspect", str(p), "--on-bad-record", "skip"]).returncode == 0


def test_train_fails_fast_on_a_bad_corpus_with_exit_code_3(tmp_path, tiny_model_dir):
    p = tmp_path / "c.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": 5}\n')
    proc = cli(["train", "--model", str(tiny_model_dir), "--data", str(p), "--out", str(tmp_path / "o")], check=False)
    assert proc.returncode == 3
    assert f"error: {p}:2: field 'response' must be a string, got int" in proc.stderr


def test_train_skip_policy_under_two_ranks_writes_rejects(tmp_path, tiny_model_dir, world_texts):
    p = tmp_path / "c.jsonl"
    rows = [json.dumps(r) for r in world_texts.train[:16]]
    rows.insert(5, '{"prompt": "a"}')
    p.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    launch(["train", "--model", str(tiny_model_dir), "--data", str(p), "--out", str(out), "--max-steps", "1",
            "--on-bad-record", "skip", "--max-length", "96"], nproc=2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 16 and summary["rejects"]["rejected"] == 1
    reject = json.loads((out / "rejects.jsonl").read_text())
    assert reject["location"] == f"{p}:6" and reject["reason"].startswith("missing field 'response' (the record has 'prompt'")


def test_missing_model_dir_is_a_config_error(tmp_path, small_corpus):
    proc = cli(["train", "--model", str(tmp_path / "nope"), "--data", str(small_corpus), "--out", str(tmp_path / "o")],
               check=False)
    assert proc.returncode == 4
    assert "not a Hugging Face model directory (no config.json)" in proc.stderr


def test_a_model_dir_without_weights_or_with_a_broken_file_is_a_config_error(tmp_path, tiny_model_dir, small_corpus):
    """Both passed the job's validation and every stage before the model loaded, then ended in a traceback (exit 1)."""
    import shutil

    for name, damage in (("noweights", lambda f: f.unlink()), ("truncated", lambda f: f.write_bytes(f.read_bytes()[:100]))):
        model = tmp_path / name
        shutil.copytree(tiny_model_dir, model)
        damage(model / "model.safetensors")
        proc = cli(["train", "--model", str(model), "--data", str(small_corpus), "--out", str(tmp_path / "o")],
                   check=False)
        said = " ".join(proc.stderr.split())
        assert proc.returncode == 4, said
        assert (f"{model}: no weights beside config.json" in said if name == "noweights" else
                f"{model / 'model.safetensors'}: not a readable safetensors file" in said), said
    # what from_pretrained reads, no more: a copy's hidden `._model.safetensors` is left alone; a sharded model's index
    # must find its shards
    from transformers import AutoModelForCausalLM

    from lancet_ds.errors import ConfigError
    from lancet_ds.modeling import check_model_dir

    hidden, sharded = tmp_path / "hidden", tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, hidden)
    (hidden / "._model.safetensors").write_bytes(b"\0" * 64)
    assert check_model_dir(hidden) == hidden
    AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).save_pretrained(str(sharded), max_shard_size="100KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and check_model_dir(sharded) == sharded
    shards[0].unlink()
    with pytest.raises(ConfigError, match=rf"model.safetensors.index.json: names weight shards that are not there \({shards[0].name}\)"):
        check_model_dir(sharded)


def test_a_stage_command_before_its_prerequisite_names_the_command_to_run(tmp_path):
    proc = cli(["queries", "--run", str(tmp_path / "run"), "--queries", str(tmp_path / "q.jsonl")], check=False)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 4 and f"Pass --model, or run `lancet-ds fit --out {tmp_path / 'run'}` first." in said, said


def test_ctrl_c_exits_130_and_says_how_to_go_on(tmp_path):
    """Ctrl-C in a running command (here a world build, once it has started) exits 130 with one line on what to do;
    it exited without a word."""
    import signal
    import subprocess
    import sys

    # as from a terminal: a pytest-xdist worker ignores SIGINT, and a child would inherit that and never see it
    proc = subprocess.Popen([sys.executable, "-m", "lancet_ds", "demo-world", str(tmp_path / "w"), "--size", "tiny"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "demo world: building" in line:
            break
    for _ in range(30):  # once a second until it stops: a signal landing inside a library call can be lost there
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=1)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 130 and "interrupted. Rerun the same command to go on" in err, err[-2000:]


def test_runs_leave_no_shared_memory_behind(tmp_path, tiny_model_dir, small_corpus):
    """DeepSpeed's CPU accelerator maps a ~64 MB /dev/shm buffer per rank and never unlinks it."""
    import os
    from pathlib import Path

    for env in ({}, {"LANCET_FAULT_AFTER_STEP": "1"}):
        proc = launch(["train", "--model", str(tiny_model_dir), "--data", str(small_corpus), "--out",
                       str(tmp_path / f"o{len(env)}"), "--max-steps", "2", "--max-length", "96"],
                      nproc=2, env=env, check=not env)
        left = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{proc.master_port}_*"))
        assert not left, left


def test_data_inspect_on_an_empty_file_exits_3(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    proc = cli(["data", "inspect", str(p)], check=False)
    assert proc.returncode == 3 and f"{p}: holds no record" in proc.stderr


def test_a_corpus_of_only_bad_records_is_bad_input_exit_3(tmp_path, tiny_model_dir):
    """Under `--on-bad-record skip`, a corpus whose every record is set aside leaves nothing to fit: bad input
    (exit 3), and the message says where the reasons are."""
    p = tmp_path / "c.jsonl"
    p.write_text('{"prompt": "a"}\n{"prompt": "b", "response": 5}\n')
    run = tmp_path / "run"
    proc = cli(["fit", "--model", str(tiny_model_dir), "--data", str(p), "--out", str(run), "--on-bad-record", "skip"],
               check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"{p}: no usable fitting sequence" in proc.stderr and str(run / "factors" / "rejects.jsonl") in proc.stderr
    assert len((run / "factors" / "rejects.jsonl").read_text().splitlines()) == 2


def test_data_options_without_the_data_set_are_refused(tmp_path):
    """`correct` without --data reads the corpus the score stage recorded, as recorded: a schema or bad-record
    option typed beside it would be ignored, so it is refused (exit 4) instead."""
    proc = cli(["correct", "--run", str(tmp_path / "run"), "--schema", "hh", "--on-bad-record", "skip"], check=False)
    assert proc.returncode == 4
    assert "--schema, --on-bad-record given without --data" in proc.stderr and "Pass --data" in proc.stderr


def test_a_model_config_without_its_sizes_is_a_config_error():
    """The memory planner reads the model's widths from its config; a config that names none says which file,
    which value and what to do (exit 4), not a bare ValueError."""
    import pytest
    import torch
    from transformers import PretrainedConfig

    from lancet_ds.errors import ConfigError
    from lancet_ds.influence.capacity import model_facts

    model = torch.nn.Linear(2, 2)
    model.config = PretrainedConfig(name_or_path="/models/odd")
    with pytest.raises(ConfigError, match=r"/models/odd/config.json .*none of hidden_size, n_embd, d_model "):
        model_facts(model)
