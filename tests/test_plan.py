"""`lancet-ds plan` and the job's memory plan (issue 15): per-rank figures from a config alone, partitions
chosen to fit a budget, and a job that cannot fit refused (exit 4) before any work. The plan's agreement
with measured peaks on real 1-, 2- and 4-rank runs is checked by the bench's scale suite (test_bench)."""

from __future__ import annotations

import json

import pytest

from conftest import cli
from test_job import plain, write_job

LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}


@pytest.fixture
def llama_7b(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_7B))
    return path


def _plan_lines(stdout: str) -> str:
    return "\n".join(line for line in stdout.splitlines() if line.startswith("plan "))


def _plan(config, *args: str) -> dict:
    return json.loads(cli(["plan", "--model", str(config), "--json", *args]).stdout)


def test_factors_and_ihvps_a_rank_owns_fall_with_ranks(llama_7b):
    one, eight = _plan(llama_7b, "--world-size", "1"), _plan(llama_7b, "--world-size", "8")
    assert 6.5e9 < one["model"]["params"] < 7e9 and one["model"]["tap_points"] == 32
    stage = lambda plan, name: next(s for s in plan["stages"] if s["stage"] == name)  # noqa: E731
    # LinFAC, hidden 4096, 32 MLP sublayers: Â, Ŝ (fp32) + their eigenbases (fp64) = 32·2·4096²·12 B on one rank
    assert stage(one, "fit")["owned_factor_bytes"] == pytest.approx(32 * 2 * 4096**2 * 12, rel=1e-3)
    assert stage(eight, "fit")["owned_factor_bytes"] == stage(one, "fit")["owned_factor_bytes"] // 8
    assert stage(eight, "queries")["owned_ihvp_bytes"] * 8 == stage(one, "queries")["owned_ihvp_bytes"]
    assert stage(eight, "fit")["per_rank_bytes"]["weights_shard"] * 8 == stage(one, "fit")["per_rank_bytes"]["weights_shard"]


def test_16_bit_weights_halve_the_weights_shard_and_activations(llama_7b):
    # on an H200, bf16 ZeRO-3 stages held 2.1 GB where the plan, counting fp32 weights, said 3.6 GB (width 2048)
    fp32, bf16 = (_plan(llama_7b, "--world-size", "8", "--weights-dtype", d) for d in ("float32", "bfloat16"))
    for name in ("fit", "queries", "score"):
        a, b = (next(s for s in plan["stages"] if s["stage"] == name)["per_rank_bytes"] for plan in (fp32, bf16))
        assert b["weights_shard"] * 2 == a["weights_shard"] and b["stage_tensors"] == a["stage_tensors"]
        assert b["activations"] < 0.55 * a["activations"]  # the fp32 logits stay fp32


def test_fp16_weights_count_the_loss_scale_s_copies_of_a_tap_point(llama_7b):
    """Under fp16 the influence passes run under a dynamic loss scale whose gate copies the largest tap point's input
    (fp16) and its output gradient twice (fp32), one point at a time: B·T·(M·2 + 2·P·4); bf16 makes no copies."""
    bf16, fp16 = (_plan(llama_7b, "--world-size", "8", "--weights-dtype", d) for d in ("bfloat16", "float16"))
    copies = 8 * 512 * (4096 * 2 + 2 * 4096 * 4)  # micro_batch 8, max_length 512, LinFAC MLP sublayers P = M = 4096
    for name in ("fit", "queries", "score"):
        a, b = (next(s for s in plan["stages"] if s["stage"] == name)["per_rank_bytes"] for plan in (bf16, fp16))
        assert "loss_scale_copies" not in a and b["loss_scale_copies"] == copies
        assert b["total"] - a["total"] == copies


def test_a_jobs_plan_takes_the_weights_dtype_from_its_deepspeed_config():
    from lancet_ds.modeling import load_ds_config
    from lancet_ds.packaged import DS_CONFIGS
    from lancet_ds.plan import engine_inputs

    assert engine_inputs(load_ds_config(DS_CONFIGS / "zero3_bf16.json")) == {"zero_stage": 3, "weights_dtype": "bfloat16"}
    assert engine_inputs(load_ds_config(DS_CONFIGS / "zero2.json")) == {"zero_stage": 2, "weights_dtype": "float32"}


def test_a_budget_splits_scoring_into_partitions_that_fit(llama_7b):
    free = _plan(llama_7b, "--world-size", "8", "--micro-batch", "1")
    score = next(s for s in free["stages"] if s["stage"] == "score")
    tight = score["per_rank_bytes"]["total"] - score["per_rank_bytes"]["stage_tensors"] // 2
    planned = _plan(llama_7b, "--world-size", "8", "--micro-batch", "1", "--memory-budget", str(tight))
    score = next(s for s in planned["stages"] if s["stage"] == "score")
    assert score["partitions"] >= 2 and score["per_rank_bytes"]["total"] <= tight and score["fits"]


def test_factors_on_cpu_leave_the_device_one_tap_point_at_a_time_and_need_no_partitions(llama_7b):
    """`--factors-on cpu`: the sums and owned factors move to host memory (the same bytes the device held), the
    device keeps one point's contribution or eigendecomposition, and a budget that splits the device fit into
    several passes over the fitting set lets the host fit run in one."""
    stage = lambda plan: next(s for s in plan["stages"] if s["stage"] == "fit")  # noqa: E731
    device = stage(_plan(llama_7b, "--world-size", "8"))
    host = stage(_plan(llama_7b, "--world-size", "8", "--factors-on", "cpu"))
    assert host["host_factor_bytes"] == device["per_rank_bytes"]["stage_tensors"] == 32 * 2 * 4096**2 * 4  # all sums
    assert host["per_rank_bytes"]["stage_tensors"] == 3 * 4096**2 * 8  # one factor's float64 eigendecomposition
    from lancet_ds.plan import PlanInputs, make_plan, meta_model

    tight = str(device["per_rank_bytes"]["total"] - device["per_rank_bytes"]["stage_tensors"] // 2)
    split, one = (stage(make_plan(meta_model(str(llama_7b)), PlanInputs(world_size=8, memory_budget=tight, factors_on=f)))
                  for f in ("device", "cpu"))  # the fit stage's figures (queries and score do not fit this budget)
    assert split["partitions"] >= 2 and split["fits"] and one["partitions"] == 1 and one["fits"]
    text = cli(["plan", "--model", str(llama_7b), "--world-size", "8", "--factors-on", "cpu"]).stdout
    assert "host memory 4.29 GB for the factors" in text


def test_a_budget_nothing_fits_exits_4_saying_what_to_change(llama_7b):
    proc = cli(["plan", "--model", str(llama_7b), "--memory-budget", "2GB"], check=False)
    assert proc.returncode == 4
    assert "does not fit the memory budget of 2.00 GB per rank" in proc.stderr and "add ranks" in proc.stderr
    assert "DOES NOT FIT" in proc.stdout
    bad = cli(["plan", "--model", str(llama_7b), "--memory-budget", "lots"], check=False)
    assert bad.returncode == 4 and "not a size" in bad.stderr


def test_a_job_that_cannot_fit_its_budget_is_refused_before_any_work(tmp_path, tiny_world):
    out = tmp_path / "run"
    job = write_job(tmp_path / "job.yaml", tiny_world, out, memory_budget="100KB")
    checked = plain("job", "validate", str(job))
    assert checked.returncode == 4 and "fit:" in _plan_lines(checked.stdout) and "does not fit" in checked.stderr
    refused = plain("job", "run", "--job", str(job))
    assert refused.returncode == 4 and "does not fit the memory budget" in refused.stderr
    assert not (out / "factors").exists()
    fits = write_job(tmp_path / "fits.yaml", tiny_world, out, memory_budget="4GB")
    ok = plain("job", "validate", str(fits))
    assert ok.returncode == 0 and "score:" in _plan_lines(ok.stdout)
