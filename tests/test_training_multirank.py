"""ZeRO-3 training through the real `deepspeed` launcher on CPU ranks (gloo): partitioning, loss
going down, 1 rank vs 2 ranks, kill + resume, and an engine from every shipped DeepSpeed config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, launch

pytestmark = pytest.mark.multirank


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run / "model").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _train_args(model, data, out, micro, accum, extra=()):
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--epochs", "2", "--seed", "3",
            "--lr", "3e-3", "--max-length", "96", "--micro-batch", str(micro), "--grad-accum", str(accum), *extra]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_model_dir, small_corpus):
    out = tmp_path_factory.mktemp("r2")
    launch(_train_args(tiny_model_dir, small_corpus, out, 4, 1), nproc=2)
    return out


def test_two_ranks_partition_parameters_and_lower_the_loss(two_rank_run):
    s = _summary(two_rank_run)
    assert s["world_size"] == 2 and s["samples"] == 96 and s["steps_run"] == 24
    locals_ = s["local_numel_per_rank"]
    assert len(locals_) == 2 and all(0 < n < s["full_numel"] for n in locals_)
    assert sum(locals_) >= s["full_numel"]
    losses = s["losses"]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


def test_one_and_two_ranks_agree(tmp_path, tiny_model_dir, small_corpus, two_rank_run):
    one = tmp_path / "r1"
    launch(_train_args(tiny_model_dir, small_corpus, one, 4, 2), nproc=1)
    l1, l2 = _summary(one)["losses"], _summary(two_rank_run)["losses"]
    assert len(l1) == len(l2) == 24
    assert torch.allclose(torch.tensor(l1), torch.tensor(l2), rtol=1e-4, atol=1e-5), (l1, l2)
    w1, w2 = _weights(one), _weights(two_rank_run)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4), k


def test_killed_run_resumes_to_the_same_model(tmp_path, tiny_model_dir, small_corpus, two_rank_run):
    out = tmp_path / "resumed"
    args = _train_args(tiny_model_dir, small_corpus, out, 4, 1, ["--save-every", "4"])
    killed = launch(args, nproc=2, env={"LANCET_FAULT_AFTER_STEP": "10"}, check=False)
    assert killed.returncode != 0 and not (out / "model").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step8"
    with open(out / "train_log.jsonl", "a") as fh:  # a kill in the middle of a row
        fh.write('{"step": 11, "of": 24, "lo')
    resumed = launch(args, nproc=2)
    assert "dropped a torn last line" in resumed.stdout + resumed.stderr
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 25))  # steps 9 and 10 once, though the killed run logged them
    assert abs(log[-1]["loss"] - _summary(two_rank_run)["losses"][-1]) < 1e-6
    w, ref = _weights(out), _weights(two_rank_run)
    for k in ref:
        assert torch.allclose(w[k], ref[k], atol=1e-6), k


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "ds_configs").glob("*.json")))
def test_every_shipped_ds_config_builds_an_engine_and_trains(tmp_path, tiny_model_dir, small_corpus, config):
    out = tmp_path / "run"
    launch(["train", "--model", str(tiny_model_dir), "--data", str(small_corpus), "--out", str(out),
            "--ds-config", str(REPO / "ds_configs" / config), "--max-steps", "2", "--max-length", "96"], nproc=1)
    s = _summary(out)
    assert s["steps_run"] == 2 and all(x == x for x in s["losses"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out / "model"))
    assert sum(p.numel() for p in model.parameters()) == s["full_numel"]
