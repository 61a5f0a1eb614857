"""`lancet-ds fit` through the real deepspeed launcher (ZeRO-3, CPU ranks): 1 rank vs 2 ranks, kill +
resume, two nodes simulated on loopback, synced generation, stored safetensors, refusal of corrupt or
mismatched files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import os
import subprocess

from conftest import REPO, cli, free_port, launch
from lancet_ds.errors import ConfigError
from lancet_ds.influence.factor_store import load_factors

pytestmark = pytest.mark.multirank


def fit_args(model, data, out, *extra):
    return ["fit", "--model", str(model), "--data", str(data), "--out", str(out), "--fit-responses", "corpus",
            "--num-samples", "40", "--micro-batch", "4", "--max-length", "96", "--eigen-correction", "--dtype", "float64",
            *extra]


def assert_same_factors(d1, d2, rtol=1e-4):
    f1, m1 = load_factors(d1 / "factors")
    f2, m2 = load_factors(d2 / "factors")
    assert m1["sublayers"] == m2["sublayers"] and m1["num_sequences"] == m2["num_sequences"]
    for name in m1["sublayers"]:
        a, b = f1[name], f2[name]
        for key in ("A", "S", "LA", "LS", "Lambda"):
            scale = float(b[key].abs().max())
            assert torch.allclose(a[key], b[key], rtol=rtol, atol=rtol * scale), (name, key)
        recon = lambda f, q, l: f[q] @ torch.diag(f[l]) @ f[q].T  # noqa: E731 (eigenvectors up to sign)
        assert torch.allclose(recon(a, "QA", "LA"), a["A"].double(), atol=1e-6 * float(a["A"].abs().max()))


@pytest.fixture(scope="module")
def two_rank_fit(tmp_path_factory, tiny_model_dir, small_corpus):
    out = tmp_path_factory.mktemp("fit2")
    launch(fit_args(tiny_model_dir, small_corpus, out), nproc=2)
    return out


def test_two_ranks_write_sharded_safetensors_with_metadata(two_rank_fit, tiny_model_dir):
    from safetensors import safe_open

    from lancet_ds.fingerprint import model_fingerprint

    index = json.loads((two_rank_fit / "factors" / "index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == ["factors-00000-of-00002.safetensors", "factors-00001-of-00002.safetensors"]
    meta = index["metadata"]
    assert meta["model_fingerprint"] == model_fingerprint(tiny_model_dir)
    assert meta["sublayers"] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert meta["world_size"] == 2 and meta["num_sequences"] == 40 and meta["fisher"] == "sampled"
    assert index["weight_map"]["model.layers.1.mlp.Lambda"] == files[1]
    with safe_open(str(two_rank_fit / "factors" / files[0]), "pt") as fh:
        assert json.loads(fh.metadata()["model_fingerprint"]) == meta["model_fingerprint"]
        assert set(fh.keys()) == {f"model.layers.0.mlp.{k}" for k in ("A", "S", "QA", "LA", "QS", "LS", "Lambda")}
    rows = [json.loads(x) for x in (two_rank_fit / "factors" / "fit_set.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["input_ids"]) == len(r["loss_mask"]) for r in rows)
    assert "model.layers.0.mlp" in cli(["factors", "inspect", str(two_rank_fit)]).stdout


def test_one_rank_gives_the_same_factors(tmp_path, tiny_model_dir, small_corpus, two_rank_fit):
    launch(fit_args(tiny_model_dir, small_corpus, tmp_path), nproc=1)
    assert_same_factors(tmp_path, two_rank_fit)


def test_killed_fit_resumes_to_the_same_factors(tmp_path, tiny_model_dir, small_corpus, two_rank_fit):
    args = fit_args(tiny_model_dir, small_corpus, tmp_path, "--checkpoint-every", "8")
    killed = launch(args, nproc=2, env={"LANCET_FAULT_AFTER_STEP": "3"}, check=False)
    assert killed.returncode != 0 and not (tmp_path / "factors" / "index.json").exists()
    assert sorted(p.name for p in (tmp_path / "factors" / "partial").iterdir()) == [
        "covariance-p00000003-rank00000-of-00002.safetensors", "covariance-p00000003-rank00001-of-00002.safetensors"]
    resumed = launch(args + ["--factors-on", "cpu"], nproc=2)  # e.g. killed for memory: the sums go to the host
    assert "covariance pass: resuming after pass 3" in resumed.stdout
    assert_same_factors(tmp_path, two_rank_fit, rtol=1e-6)
    assert not (tmp_path / "factors" / "partial").exists()
    memory = json.loads((tmp_path / "factors" / "index.json").read_text())["metadata"]["memory"]
    assert memory["factors_on"] == "cpu" and len(memory["predicted_host_peak_bytes_per_rank"]) == 2
    again = launch(args, nproc=2)  # where the sums lived is not part of the result
    assert "fit: " in again.stdout and "already holds this result; reusing it" in again.stdout
    other = launch(args[:-2] + ["--checkpoint-every", "16"], nproc=1, check=False)
    assert other.returncode == 4 and "holds a fit result made with other options" in other.stderr


def test_corrupt_or_mismatched_factors_are_refused(tmp_path, two_rank_fit):
    bad = tmp_path / "run"
    shutil.copytree(two_rank_fit, bad)
    with pytest.raises(ConfigError, match="fitted on another model"):
        load_factors(bad / "factors", model_fingerprint="0" * 64)
    with pytest.raises(ConfigError, match="cover sublayers"):
        load_factors(bad / "factors", sublayers=["model.layers.0.mlp"])
    shard = bad / "factors" / "factors-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    proc = cli(["factors", "inspect", str(bad)], check=False)
    assert proc.returncode == 4
    assert "cannot read the factor shard" in proc.stderr and "rerun `lancet-ds fit`" in proc.stderr


def test_ekfac_with_generated_responses_under_two_ranks(tmp_path, tiny_model_dir, small_corpus):
    launch(["fit", "--model", str(tiny_model_dir), "--data", str(small_corpus), "--out", str(tmp_path),
            "--method", "ekfac", "--fit-responses", "generate", "--num-samples", "10", "--micro-batch", "3",
            "--max-new-tokens", "12", "--max-length", "96"], nproc=2)
    factors, meta = load_factors(tmp_path / "factors")
    assert meta["method"] == "ekfac" and meta["eigen_correction"] and meta["fit_responses"] == "generate"
    assert "model.layers.0.mlp.down_proj" in factors and factors["model.layers.0.mlp.down_proj"]["A"].shape == (64, 64)
    rows = [json.loads(x) for x in (tmp_path / "factors" / "fit_set.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all("generated_response" in r for r in rows)
    assert all(1 <= sum(r["loss_mask"]) <= 12 for r in rows)
    # LinFAC on EK-FAC's sequences (as a job's EK-FAC comparison borrows LinFAC's): no new draw, no generation,
    # on 2 ranks of which rank 1 looks for a recorded set of its own after rank 0 has copied the borrowed one in
    borrowed = launch([str(tiny_model_dir), str(small_corpus), str(tmp_path), str(tmp_path / "linfac")], nproc=2,
                      module="tests.late_rank_borrow_worker", timeout=300)
    assert "generating responses" not in borrowed.stdout and "fit set: the 10 sequences of" in borrowed.stdout
    assert (tmp_path / "linfac" / "factors" / "fit_set.jsonl").read_text() == (tmp_path / "factors" / "fit_set.jsonl").read_text()
    assert load_factors(tmp_path / "linfac" / "factors")[1]["num_sequences"] == 10
    same = ["fit", "--model", str(tiny_model_dir), "--data", str(small_corpus), "--fit-responses", "generate",
            "--micro-batch", "3", "--max-new-tokens", "12", "--max-length", "96", "--fit-set-from", str(tmp_path)]
    other = cli(same + ["--out", str(tmp_path / "other"), "--num-samples", "11"], check=False)
    assert other.returncode == 4 and "drawn otherwise (num_samples: 10 there, 11 here)" in other.stderr
    # the same corpus at another path (a job's scratch copy) draws the same set: borrowed, not refused
    copy = tmp_path / "elsewhere" / small_corpus.name
    copy.parent.mkdir()
    copy.write_bytes(small_corpus.read_bytes())
    moved = cli([str(copy) if a == str(small_corpus) else a for a in same]
                + ["--out", str(tmp_path / "moved"), "--num-samples", "10"])
    assert "fit set: the 10 sequences of" in moved.stdout and "generating responses" not in moved.stdout


@pytest.mark.parametrize("config", ["zero2.json", "zero3_bf16.json", "zero3_offload.json"])
def test_fit_runs_under_every_shipped_ds_config(tmp_path, tiny_model_dir, small_corpus, two_rank_fit, config):
    from conftest import REPO

    launch(fit_args(tiny_model_dir, small_corpus, tmp_path, "--ds-config", str(REPO / "ds_configs" / config)), nproc=1)
    f, meta = load_factors(tmp_path / "factors")
    ref, _ = load_factors(two_rank_fit / "factors")
    tol = 0.1 if "bf16" in config else 1e-4  # bf16 activations round at ~3 significant digits
    for name in meta["sublayers"]:
        for key in ("A", "S"):
            err = float((f[name][key] - ref[name][key]).norm() / ref[name][key].norm())
            assert err < tol, (name, key, err)


def test_two_nodes_on_loopback_write_the_same_factors(tmp_path, two_rank_fit, tiny_model_dir, small_corpus):
    """Two launcher processes (node ranks 0 and 1 of a two-host hostfile, one rank each, DESIGN.md
    section 4) form one ZeRO-3 group and write the factors of one node with two ranks."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port, out = free_port(), tmp_path / "two_nodes"
    procs = [subprocess.Popen(["deepspeed", "--no_ssh", "--hostfile", str(hostfile), "--num_nodes", "2", "--node_rank",
                               str(node), "--master_addr", "127.0.0.1", "--master_port", str(port), "--num_gpus", "1",
                               "--module", "lancet_ds", *fit_args(tiny_model_dir, small_corpus, out)],
                              cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert json.loads((out / "factors" / "index.json").read_text())["metadata"]["world_size"] == 2
    assert_same_factors(out, two_rank_fit)
