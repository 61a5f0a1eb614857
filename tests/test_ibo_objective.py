"""Each equation of `ibo.objective` against hand-computed values, the per-method total (Eq. 17, PBO, GA), and
the production proximity path: `ReferencePartitions.add_gradient` on real DeepSpeed ZeRO-2 and ZeRO-3 engines
adds exactly λ(θ − θ_ref) to the gradients and reports (λ/2)‖θ − θ_ref‖²."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

from conftest import run_script
from lancet_ds.ibo.objective import (bregman_loss, correction_loss, log_ratio, nll, objective, pair_margin,
                                     proximity)


def test_log_ratio_is_the_difference_of_the_sequence_sums():
    policy = torch.tensor([-1.0, -2.0, -0.25])
    ref = torch.tensor([-0.5, -3.0, -0.5], dtype=torch.float64)
    assert log_ratio(policy, ref).item() == pytest.approx((-3.25) - (-4.0))
    assert log_ratio(policy.to(torch.bfloat16), ref).dtype == torch.float64  # fp32 at least


def test_pair_margin_weights_each_log_ratio_by_its_influence():
    u = pair_margin(torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.3]), torch.tensor([0.8, 1.0]),
                    torch.tensor([-0.4, -0.6]))
    assert u.tolist() == pytest.approx([0.8 * 0.5 - 0.4 * 0.2, 1.0 * -1.0 - 0.6 * 0.3])


def test_correction_loss_by_hand_for_both_signs_of_epsilon():
    # one pair, u = 1·2 + (−0.5)·1 = 1.5
    args = (torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([-0.5]))
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731 − −log σ(x) = softplus(−x)
    assert correction_loss(*args, epsilon=-1.0).item() == pytest.approx(softplus(1.5), rel=1e-6)
    assert correction_loss(*args, epsilon=1.0).item() == pytest.approx(softplus(-1.5), rel=1e-6)
    assert correction_loss(*args, epsilon=-1.0, form="paper").item() == pytest.approx(-softplus(-1.5), rel=1e-6)
    assert correction_loss(*args, epsilon=1.0, form="paper").item() == pytest.approx(softplus(-1.5), rel=1e-6)
    with pytest.raises(ValueError, match="cor_form must be one of"):
        correction_loss(*args, form="other")


def test_bregman_loss_gradient_is_exp_delta_minus_one_per_token():
    pol = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0, -3.0])
    loss = bregman_loss(pol, ref, torch.ones(3))
    deltas = [0.5, -1.0, 0.0]
    assert loss.item() == pytest.approx(sum(math.exp(d) - d - 1 for d in deltas) / 3, rel=1e-6)
    loss.backward()
    assert pol.grad.tolist() == pytest.approx([(math.exp(d) - 1) / 3 for d in deltas], rel=1e-6)


def test_proximity_by_hand_with_the_reference_on_another_dtype():
    theta = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    ref = torch.tensor([[0.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    value, grad = proximity(theta, ref, lam=0.1)
    assert value.dtype == torch.float64 and value.item() == pytest.approx(0.05 * (1 + 1 + 0 + 4))
    assert grad.dtype == torch.float32 and torch.allclose(grad, torch.tensor([[0.1, -0.1], [0.0, -0.2]]))
    zero_value, zero_grad = proximity(theta, ref, lam=0.0)
    assert zero_value.item() == 0.0 and not zero_grad.any()


def test_nll_ignores_masked_tokens_and_empty_masks():
    lp = torch.tensor([-0.5, -1.5, -7.0])
    assert nll(lp, torch.tensor([1, 1, 0])).item() == pytest.approx(1.0)
    assert nll(lp, torch.zeros(3)).item() == 0.0


@pytest.mark.parametrize("method, expected", [("ibo", 0.25 + 0.5), ("pbo", 0.25 - 2.0), ("ga", -2.0)])
def test_objective_per_method(method, expected):
    l_cor, l_bd, nll_pos = torch.tensor(0.5), torch.tensor(0.25), torch.tensor(2.0)
    assert objective(method, l_cor, l_bd, nll_pos).item() == pytest.approx(expected)


@pytest.mark.parametrize("method, expected", [("ibo", 4 * 0.25 + 0.5), ("pbo", 4 * 0.25 - 2.0), ("ga", -2.0)])
def test_bd_weight_scales_l_bd_alone(method, expected):
    """w·L_BD in ibo and pbo; GA has no L_BD."""
    l_cor, l_bd, nll_pos = torch.tensor(0.5), torch.tensor(0.25), torch.tensor(2.0)
    assert objective(method, l_cor, l_bd, nll_pos, bd_weight=4.0).item() == pytest.approx(expected)


@pytest.mark.parametrize("method, expected", [("ibo", 0.25 + 0.5 + 3 * 1.5), ("pbo", 0.25 - 2.0), ("ga", -2.0),
                                              ("llm_ul", -0.5 * 2.0 + 0.25), ("sft_er", 2.0 + 1.5),
                                              ("dpo_er", 0.5 + 1.5)])
def test_the_likelihood_weight_adds_ibo_s_neutral_nll_alone(method, expected):
    """μ·NLL(judge-passed neutral samples) joins ibo's Eq. 17 (`correct --neutral-likelihood`); the other
    methods ignore μ (sft_er's and dpo_er's replay NLL keeps its weight 1)."""
    l_cor, l_bd, nll_pos, nll_replay = torch.tensor(0.5), torch.tensor(0.25), torch.tensor(2.0), torch.tensor(1.5)
    assert objective(method, l_cor, l_bd, nll_pos, nll_replay, likelihood_weight=3.0).item() == pytest.approx(expected)
    if method == "ibo":  # off: the paper's objective, whatever the replay term holds
        assert objective(method, l_cor, l_bd, nll_pos, nll_replay).item() == pytest.approx(0.75)


def test_logged_pull_of_l_bd_includes_its_weight():
    """The logged pull of L_BD on the tokens is that of w·L_BD, checked against autograd of the hand-written
    term; L_COR's pull does not depend on w."""
    from lancet_ds.ibo.step import local_pull_squares

    lp = torch.tensor([-0.3, -1.2, -0.7], requires_grad=True)
    ref = torch.tensor([-0.5, -1.0, -0.7])
    terms = (lp.sum() * 0.1, bregman_loss(lp, ref, torch.ones(3)), lp.sum() * 0, lp.sum() * 0, lp.sum() * 0)
    names, squares = local_pull_squares("ibo", terms, lp, bd_weight=4.0)
    (by_hand,) = torch.autograd.grad(4.0 * bregman_loss(lp, ref, torch.ones(3)), lp)
    assert names == ["L_COR", "L_BD"]
    assert squares[0] == pytest.approx(3 * 0.1 ** 2) and squares[1] == pytest.approx(float(by_hand.pow(2).sum()))


def test_objective_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        objective("dpo", torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0))


# ---- the production path: ReferencePartitions on real DeepSpeed engines ---------------------------------

PROXIMITY_SCRIPT = textwrap.dedent('''
    """For ZeRO stage 2 and 3: snapshot θ_ref, set θ = θ_ref + δ, backward, then add_gradient(λ); report the
    full tensors (gathered) so the test can compare them, and the logged norms, with λ(θ − θ_ref) computed by hand."""
    import json
    import sys

    import torch
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad, safe_set_full_fp32_param

    from lancet_ds import distributed as dist_utils
    from lancet_ds.ibo.proximity import ReferencePartitions
    from lancet_ds.modeling import make_engine

    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the launcher adds --local_rank=N
    out, lam, stages = argv[0], float(argv[1]), [int(s) for s in argv[2].split(",")]
    rows = {}
    ok = False
    try:
        for stage in stages:
            torch.manual_seed(0)
            model = torch.nn.Linear(6, 4)  # sizes even: DeepSpeed's safe_set_full_fp32_param fails on padded partitions
            theta_ref = {n: p.detach().clone() for n, p in model.named_parameters()}
            cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                   "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.0}},
                   "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
                   "steps_per_print": 1000000}
            engine = make_engine(model, cfg)
            anchor = ReferencePartitions(engine)
            params = dict(engine.module.named_parameters())
            theta = {n: theta_ref[n] + 0.1 * torch.randn(theta_ref[n].shape) for n in params}
            for n, p in params.items():
                safe_set_full_fp32_param(p, theta[n].clone())
            x = torch.randn(2, 6) + dist_utils.rank()
            engine.backward(engine(x).pow(2).sum())
            before = {n: safe_get_full_grad(p).clone() for n, p in params.items()}
            logged = anchor.add_gradient(lam)
            after = {n: safe_get_full_grad(p).clone() for n, p in params.items()}
            read = {n: safe_get_full_fp32_param(p).clone() for n, p in params.items()}
            rows[stage] = {**logged, "partitioned": anchor.partitioned, "world": dist_utils.world_size(),
                           "grad_before": {n: t.tolist() for n, t in before.items()},
                           "theta_ref": {n: t.tolist() for n, t in theta_ref.items()},
                           "theta": {n: t.tolist() for n, t in theta.items()},
                           "theta_read": {n: t.tolist() for n, t in read.items()},
                           "added": {n: (after[n] - before[n]).tolist() for n in params},
                           "ref_numel": sum(t.numel() for t in anchor.ref),
                           "full_numel": sum(t.numel() for t in theta_ref.values())}
            engine.step()
        if dist_utils.is_main():
            with open(out, "w") as fh:
                json.dump(rows, fh)
        ok = True
    finally:
        dist_utils.shutdown(together=ok)
''')


def _check_proximity(row: dict, lam: float) -> None:
    sq = 0.0
    for name, ref in row["theta_ref"].items():
        theta, ref = torch.tensor(row["theta"][name]), torch.tensor(ref)
        assert torch.equal(torch.tensor(row["theta_read"][name]), theta)  # θ was set as intended
        diff = theta - ref
        sq += float(diff.double().pow(2).sum())
        assert torch.allclose(torch.tensor(row["added"][name]), lam * diff, rtol=1e-5, atol=1e-7), name
    assert row["proximity"] == pytest.approx(0.5 * lam * sq, rel=1e-9)
    # the logged parameter-space norms: of the gradient backward left (gathered here), and of λ(θ − θ_ref)
    terms = sum(float(torch.tensor(g).double().pow(2).sum()) for g in row["grad_before"].values())
    assert row["grad_norm_terms"] == pytest.approx(math.sqrt(terms), rel=1e-6) and terms > 0
    assert row["grad_norm_proximity"] == pytest.approx(lam * math.sqrt(sq), rel=1e-6)


def _run_script(tmp_path, nproc: int, stages: str, lam: float) -> dict:
    out = tmp_path / "rows.json"
    run_script(tmp_path / "proximity_check.py", PROXIMITY_SCRIPT, [str(out), str(lam), stages], nproc)
    return json.loads(out.read_text())


def test_production_proximity_on_zero2_and_zero3_engines(tmp_path):
    lam = 0.3
    rows = _run_script(tmp_path, 1, "2,3", lam)
    assert rows["2"]["partitioned"] is False and rows["3"]["partitioned"] is True
    for row in rows.values():
        _check_proximity(row, lam)


@pytest.mark.multirank
def test_production_proximity_on_two_zero3_ranks(tmp_path):
    lam = 0.3
    row = _run_script(tmp_path, 2, "3", lam)["3"]
    assert row["world"] == 2 and row["partitioned"] and row["ref_numel"] < row["full_numel"]  # θ_ref: a partition
    _check_proximity(row, lam)  # the value is all-reduced over the partitions: the whole model's
