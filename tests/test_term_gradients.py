"""Each term's gradient norm in parameter space (`ibo.term_gradients`) on real DeepSpeed engines (ZeRO-2 and
ZeRO-3 on one rank, ZeRO-3 on two) over a tiny Llama loaded with from_pretrained, against plain autograd on
the same model in one process; and the steps that log them update the model exactly as steps that do not."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from conftest import REPO, run_script

SCRIPT = textwrap.dedent('''
    """For each ZeRO stage given: three IBO steps on one draw per step, logging each term's gradient norm before
    every step, and three steps without; writes the first step's norms and both runs' final weights."""
    import sys

    import torch
    from deepspeed.utils import safe_get_full_fp32_param

    from lancet_ds import distributed as dist_utils
    from lancet_ds.fileio import write_json
    from lancet_ds.ibo.proximity import ReferencePartitions
    from lancet_ds.ibo.step import method_terms, step_loss
    from lancet_ds.ibo.term_gradients import term_gradient_norms
    from lancet_ds.modeling import load_model, make_engine

    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher adds --local_rank=N
    tests, model_dir, out, stages = argv[0], argv[1], argv[2], argv[3].split(",")  # "3", "3bf16", "3offload", "2",
    # "3scaled", "2scaled": fp32 with a static loss scale of 1024 set on the ZeRO optimizer, so that the gradients
    # between backward and the step carry it, as under fp16 (which DeepSpeed's CPU accelerator does not run);
    # "3autocast": DeepSpeed's torch_autocast in fp16, whose torch GradScaler scales the loss (set to 1024 here)
    dropout = float(argv[4]) if len(argv) > 4 else 0.0
    dist_utils.init_distributed()  # before a ZeRO-3 load_model partitions at load
    sys.path.insert(0, tests)
    from test_term_gradients import draw_world  # noqa: E402  the test's own draw, so both sides see the same data
    args, pairs, neutral, enc, ref, pad = draw_world(model_dir)
    terms = method_terms(args.method, args.bd_weight)
    rows = {}
    ok = False
    try:
        for stage in stages:
            cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                   "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.0}},
                   "zero_optimization": {"stage": int(stage[0]), "stage3_param_persistence_threshold": 0},
                   "bf16": {"enabled": stage.endswith("bf16")}, "steps_per_print": 10 ** 9}
            if stage.endswith("autocast"):
                cfg["torch_autocast"] = {"enabled": True, "dtype": "torch.float16"}
            if stage.endswith("offload"):  # as ds_configs/zero3_offload.json
                cfg["zero_optimization"].update(offload_param={"device": "cpu"}, offload_optimizer={"device": "cpu"})
            finals, first, prox = {}, None, None
            for logged in (True, False):
                model = load_model(model_dir, cfg)
                dropped = 0
                for module in model.modules():  # attention dropout, drawn from torch's generator
                    if hasattr(module, "attention_dropout"):
                        module.attention_dropout, dropped = dropout, dropped + 1
                torch.manual_seed(0)
                engine = make_engine(model, cfg)
                if stage.endswith("scaled"):
                    engine.optimizer.loss_scale = 1024.0
                if stage.endswith("autocast"):  # GradScaler's public API: its scale exists once it has scaled
                    engine.optimizer.torch_autocast_gradscaler.scale(torch.ones(()))
                    engine.optimizer.torch_autocast_gradscaler.update(1024.0)
                engine.train()  # as the recipe trains (from_pretrained leaves the model in eval mode, dropout off)
                anchor = ReferencePartitions(engine)
                for step in range(3):
                    def loss_of(term=None):
                        return step_loss(engine, args, pairs[step], neutral, enc, ref, pad, term=term)[0]
                    if logged:
                        norms = term_gradient_norms(engine, anchor, terms, loss_of)
                        first = first or norms
                    engine.backward(loss_of())
                    prox = anchor.add_gradient(args.lam_prox)  # the last step's: θ ≠ θ_ref after two updates
                    engine.step()
                finals[logged] = {n: safe_get_full_fp32_param(p).tolist() for n, p in engine.module.named_parameters()}
                engine.destroy()
            rows[stage] = {"norms": first, "same_update": finals[True] == finals[False], "dropped": dropped,
                           "world": dist_utils.world_size(), "proximity": prox, "final": finals[True]}
        dist_utils.on_rank0(lambda: write_json(out, rows))
        ok = True
    finally:
        dist_utils.shutdown(together=ok)
''')


def draw_world(model_dir):
    """IBO's options, three steps' pairs (each of 4, over 3 influence-weighted positive and negative samples), 6
    neutral samples, their encodings (random token ids, the response the last 5 of 8) and reference log-probs:
    the model's own, lowered by 0.2 per token on the neutral samples so L_BD's gradient is not 0 at θ = θ_ref."""
    from lancet_ds.data.records import EncodedSample
    from lancet_ds.ibo.correct import CorrectArgs
    from lancet_ds.modeling import load_tokenizer
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    g = torch.Generator().manual_seed(0)
    ids = [f"p{i}" for i in range(3)] + [f"m{i}" for i in range(3)] + [f"n{i}" for i in range(6)]
    enc = {i: EncodedSample(i, torch.randint(4, len(tok), (8,), generator=g).tolist(), [0, 0, 0] + [1] * 5)
           for i in ids}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc[i].input_ids for i in ids])).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, torch.tensor([enc[i].input_ids[1:] for i in ids])[..., None])
    ref = {i: lp[k, 2:, 0] - (0.2 if i.startswith("n") else 0.0) for k, i in enumerate(ids)}
    pairs = [[((f"p{(s + k) % 3}", 1.0 - 0.2 * k), (f"m{(s + 2 * k) % 3}", -0.5)) for k in range(4)] for s in range(3)]
    args = CorrectArgs(method="ibo", lam_prox=0.1)
    return args, pairs, [f"n{i}" for i in range(6)], enc, ref, tok.pad_token_id


def plain_norms(model_dir) -> dict[str, float]:
    """The first step's terms' gradient norms by plain autograd on the model in this process (no DeepSpeed, no
    process group), and the same for the whole objective, which their gradients must add up to."""
    from transformers import AutoModelForCausalLM

    from lancet_ds.ibo.step import method_terms, step_loss

    args, pairs, neutral, enc, ref, pad = draw_world(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    grads = {}
    for term in [*method_terms(args.method), None]:
        model.zero_grad()
        step_loss(model, args, pairs[0], neutral, enc, ref, pad, term=term)[0].backward()
        grads[term] = torch.cat([p.grad.double().flatten() for p in model.parameters()])
    assert torch.allclose(grads["L_COR"] + grads["L_BD"], grads[None], rtol=1e-5, atol=1e-9)
    return {f"grad_norm_{t}": float(g.norm()) for t, g in grads.items() if t}


def run_checks(tmp_path, model_dir, nproc: int, stages: str, dropout: float = 0.0) -> dict:
    out = tmp_path / "rows.json"
    run_script(tmp_path / "term_gradients_check.py", SCRIPT,
               [str(REPO / "tests"), str(model_dir), str(out), stages, str(dropout)], nproc)
    return json.loads(out.read_text())


def check(row: dict, expected: dict[str, float]) -> None:
    assert row["norms"] == pytest.approx(expected, rel=1e-4)
    assert all(v > 0 and math.isfinite(v) for v in row["norms"].values())
    assert row["same_update"]  # logging the norms left the update as it was, to the bit


def test_term_gradient_norms_on_zero2_and_zero3_engines(tmp_path, tiny_model_dir):
    rows = run_checks(tmp_path, tiny_model_dir, 1, "2,3")
    expected = plain_norms(tiny_model_dir)
    assert set(expected) == {"grad_norm_L_COR", "grad_norm_L_BD"}
    for row in rows.values():
        check(row, expected)


def test_the_shipped_offload_and_bf16_configs_update_as_without_the_norms(tmp_path, tiny_model_dir):
    """ZeRO-3 with optimizer and parameter offload (fp32: the norms are the plain ones), and in bf16."""
    rows = run_checks(tmp_path, tiny_model_dir, 1, "3offload,3bf16")
    check(rows["3offload"], plain_norms(tiny_model_dir))
    assert rows["3bf16"]["same_update"] and rows["3bf16"]["norms"] == pytest.approx(plain_norms(tiny_model_dir), rel=0.1)


def test_a_model_with_dropout_updates_as_without_the_norms(tmp_path, tiny_model_dir):
    """The norms' passes draw no dropout mask the step's own pass would have drawn."""
    row = run_checks(tmp_path, tiny_model_dir, 1, "3", dropout=0.5)["3"]
    assert row["dropped"] == 2  # both layers' attention drops out (the norms then differ from the plain ones)
    assert row["norms"] != pytest.approx(plain_norms(tiny_model_dir), rel=1e-3)
    assert row["same_update"] and all(v > 0 for v in row["norms"].values())


def test_a_loss_scale_leaves_the_update_and_the_logged_norms_as_they_are(tmp_path, tiny_model_dir):
    """Between backward and the optimizer step DeepSpeed's gradients carry the loss scale (fp16's, static or dynamic),
    which the step divides out: the proximity gradient λ(θ − θ_ref) is added at that scale, and the logged norms (each
    term's, the terms' together, the proximity's) are read without it. The scale is set on fp32 ZeRO-2 and ZeRO-3
    engines (DeepSpeed's CPU accelerator does not run fp16); three steps with λ = 0.1 end where unscaled steps do."""
    rows = run_checks(tmp_path, tiny_model_dir, 1, "3,3scaled,2,2scaled")
    plain = plain_norms(tiny_model_dir)
    for stage in ("3", "2"):
        scaled, unscaled = rows[f"{stage}scaled"], rows[stage]
        check(scaled, plain)
        assert scaled["proximity"] == pytest.approx(unscaled["proximity"], rel=1e-5)
        assert scaled["proximity"]["grad_norm_proximity"] > 0 and scaled["proximity"]["grad_norm_terms"] > 0
        for name, weights in unscaled["final"].items():  # (the proximity gradient added unscaled: up to 0.03 apart)
            assert torch.allclose(torch.tensor(scaled["final"][name]), torch.tensor(weights), rtol=1e-5, atol=1e-7), name


def test_under_torch_autocast_the_grad_scalers_scale_is_the_one_read(tmp_path, tiny_model_dir):
    """DeepSpeed's `torch_autocast` in fp16 scales the loss with a torch GradScaler, not its own loss scaler (whose
    scale stays 1): the norms are read without the GradScaler's scale (fp16 matmuls: within 2 % of plain autograd),
    and logging them leaves the update as it is."""
    row = run_checks(tmp_path, tiny_model_dir, 1, "3autocast")["3autocast"]
    assert row["norms"] == pytest.approx(plain_norms(tiny_model_dir), rel=0.02), row["norms"]
    assert row["same_update"] and all(v > 0 for v in row["norms"].values())


@pytest.mark.multirank
def test_term_gradient_norms_on_two_zero3_ranks(tmp_path, tiny_model_dir):
    """Each rank holds half the pairs and neutral samples and a partition of the gradient: the norms are still the
    whole objective's, as one process computes them."""
    row = run_checks(tmp_path, tiny_model_dir, 2, "3")["3"]
    assert row["world"] == 2
    check(row, plain_norms(tiny_model_dir))


@pytest.mark.parametrize("config, refused", [
    ("zero3.json", None), ("zero3_bf16.json", None), ("zero3_offload.json", None), ("zero2.json", None),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "optimizer offload"),
    ({"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}, "ZeRO stage 1 in bf16"),
    ({"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}, "ZeRO stage 2 in fp16"),
    ({"zero_optimization": {"stage": 3}, "fp16": {"enabled": True}}, None),
])
def test_the_configs_the_norms_leave_the_update_alone_under(config, refused):
    """The shipped configs and ZeRO-3 in fp16 (the norms read without the loss scale) pass; ZeRO-1/2 with offload
    or in bf16 / fp16 are refused with what to do."""
    from lancet_ds.ibo.term_gradients import unsupported_reason

    cfg = json.loads((REPO / "ds_configs" / config).read_text()) if isinstance(config, str) else config
    reason = unsupported_reason(cfg)
    assert reason is None if refused is None else (refused in reason and "ZeRO-3 config" in reason)


def zero2_variant(tmp_path, name: str, zero_optimization: dict):
    """ds_configs/zero2.json with its `zero_optimization` replaced, written to TMP/NAME."""
    cfg = tmp_path / name
    cfg.write_text(json.dumps({**json.loads((REPO / "ds_configs" / "zero2.json").read_text()),
                               "zero_optimization": zero_optimization}))
    return cfg


def validate_demo_job(tmp_path, cfg, **correct) -> None:
    """`validate_job` on the tiny demo job under the DeepSpeed config `cfg`, with `correct`'s options changed."""
    from lancet_ds.job.demo import demo_job
    from lancet_ds.job.spec import build_spec
    from lancet_ds.job.validate import validate_job

    raw = demo_job(str(tmp_path / "run"), size="tiny", ds_config=str(cfg))
    raw["stages"]["correct"].update(correct)
    validate_job(build_spec(raw), 1, files=False, check_lock=False)


def test_a_job_asking_for_the_norms_under_a_refused_config_fails_validation(tmp_path):
    """Before any stage runs, not when `correct` starts after the others."""
    from lancet_ds.errors import ConfigError

    cfg = zero2_variant(tmp_path, "zero2_offload.json", {"stage": 2, "offload_optimizer": {"device": "cpu"}})
    with pytest.raises(ConfigError, match="correct.term_grad_norms_every under .*optimizer offload"):
        validate_demo_job(tmp_path, cfg, term_grad_norms_every=10)
    validate_demo_job(tmp_path, cfg, term_grad_norms_every=0)


def test_a_job_under_zero_stage_0_fails_validation(tmp_path):
    """The correct stage snapshots θ_ref from DeepSpeed's fp32 weights, which ZeRO-0 does not keep: refused when the
    job is validated (it failed with an AttributeError when `correct` started, after the stages before it)."""
    from lancet_ds.bench.run import run_bench
    from lancet_ds.errors import ConfigError, LancetError

    cfg = zero2_variant(tmp_path, "zero0.json", {"stage": 0})
    with pytest.raises(ConfigError, match=r"correct under .*zero0.json: zero_optimization.stage is 0 .*use a ZeRO-1/2/3 config"):
        validate_demo_job(tmp_path, cfg)
    with pytest.raises(LancetError, match=r"bench under .*zero0.json: zero_optimization.stage is 0"):
        run_bench("speed", "quick", str(tmp_path / "bench"), str(cfg))  # its IBO steps snapshot θ_ref too
