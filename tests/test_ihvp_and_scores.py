"""IHVPs against the dense Kronecker solve, and influence scores against brute force: per-sample
modular gradients from probe-based autograd (no hooks), dotted with the IHVP (Eq. 9, 12–13)."""

from __future__ import annotations

import pytest
import torch

from lancet_ds.influence.covariance import BatchContext
from lancet_ds.influence.eigen import default_damping, eigendecompose
from lancet_ds.influence.fit import FitArgs, compute_factors, tap_points
from lancet_ds.influence.gradients import InfluenceScores, QueryGradientSums
from lancet_ds.influence.ihvp import ihvp, low_rank
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence.sublayers import discover
from test_factors_bruteforce import Probes, fit_set, tiny_model


def _factors(P: int, M: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, M + 3, generator=g, dtype=torch.float64)
    s = torch.randn(P, P + 3, generator=g, dtype=torch.float64)
    A, S = a @ a.T / M, s @ s.T / P
    qa, la = eigendecompose(A)
    qs, ls = eigendecompose(S)
    return A, S, {"QA": qa, "LA": la, "QS": qs, "LS": ls}


def test_ihvp_equals_dense_kronecker_solve():
    P, M = 5, 4
    A, S, f = _factors(P, M, 0)
    v = torch.randn(P, M, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lam = default_damping(torch.outer(f["LS"], f["LA"]))
    dense = torch.kron(A, S) + lam * torch.eye(P * M, dtype=torch.float64)  # (Â⊗Ŝ) vec(V) = vec(Ŝ V Âᵀ)
    x = torch.linalg.solve(dense, v.T.reshape(-1)).reshape(M, P).T  # vec stacks columns
    got = ihvp(v, f)
    assert float((got - x).norm() / x.norm()) < 1e-8
    assert torch.allclose(S @ got @ A.T + lam * got, v, atol=1e-10)


def test_corrected_ihvp_equals_dense_solve_with_corrected_diagonal():
    P, M = 4, 3
    _, _, f = _factors(P, M, 2)
    f["Lambda"] = torch.rand(P, M, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.1
    lam = default_damping(f["Lambda"])
    k = torch.kron(f["QA"], f["QS"])  # the eigenbasis of Â⊗Ŝ, in vec order
    dense = k @ torch.diag(f["Lambda"].T.reshape(-1)) @ k.T + lam * torch.eye(P * M, dtype=torch.float64)
    v = torch.randn(P, M, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = torch.linalg.solve(dense, v.T.reshape(-1)).reshape(M, P).T
    assert float((ihvp(v, f) - x).norm() / x.norm()) < 1e-8


def test_low_rank_reports_its_error():
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, v, err = low_rank(x, 2)
    s = torch.linalg.svdvals(x)
    assert abs(err - float(s[2:].norm() / s.norm())) < 1e-12
    assert abs(float((u @ v.T - x).norm() / x.norm()) - err) < 1e-12
    assert low_rank(x, 5)[2] < 1e-12


def _brute_gradients(model, samples, points):
    """Per-sample G(z) = Σ_t g_t a_tᵀ with g = ∂L/∂s of the summed response loss, via probes."""
    out = []
    for s in samples:
        with Probes(model, points) as probes:
            logits = model(input_ids=torch.tensor([s.input_ids])).logits
            loss = 0
            for t in range(1, len(s.input_ids)):
                if s.loss_mask[t]:
                    loss = loss - torch.log_softmax(logits[0, t - 1], -1)[s.input_ids[t]]
            grads = torch.autograd.grad(loss, [probes.deltas[p.name] for p in points])
        T = len(s.input_ids)
        out.append({p.name: sum(torch.outer(g.reshape(T, -1)[t], probes.inputs[p.name].detach().reshape(T, -1)[t])
                                for t in range(T)) for p, g in zip(points, grads)})
    return out


def hook_scores(model, samples, points, ihvps, micro_batch: int) -> torch.Tensor:
    """(N, K) scores from the taps (the library path), one row per sample."""
    ctx = BatchContext()
    scores = InfluenceScores(ctx, torch.float64, ihvps, per_sublayer=True)
    got = {}

    def after(_):
        assert set(scores.by_sublayer) == {p.name for p in points}
        assert torch.allclose(sum(scores.by_sublayer.values()), scores.current)
        for b, i in enumerate(ctx.indices):
            if i is not None:
                got[i] = scores.current[b].clone()
        scores.reset()

    run_passes(model, samples, points, scores, ctx, torch.float64, micro_batch, 2, "empirical", 0, after_pass=after)
    return torch.stack([got[i] for i in range(len(samples))])


def test_query_gradients_and_scores_equal_brute_force(tmp_path):
    model = tiny_model(tmp_path, "llama")
    fit = fit_set(6)
    points = tap_points(discover(model), "linfac")
    factors, _ = compute_factors(model, fit, points, FitArgs(fisher="empirical", dtype="float64", micro_batch=3),
                                 pad_id=2, partial_dir=tmp_path / "p", fingerprint="t")
    queries, candidates = fit[:3], fit[3:] + fit[:1]  # the last candidate is query 0 itself
    batch_of, n_batches = [0, 1, 0], 2
    ctx = BatchContext()
    qsums = QueryGradientSums(ctx, torch.float64, batch_of, n_batches)
    run_passes(model, queries, points, qsums, ctx, torch.float64, 2, 2, "empirical", 0)
    bq = _brute_gradients(model, queries, points)
    ihvps = {}
    for p in points:
        v_brute = torch.stack([-(bq[0][p.name] + bq[2][p.name]) / 2, -bq[1][p.name]])  # Q = ∂log p/∂s = −G
        v_hooks = qsums.sums[p.name]["V"] / torch.tensor([2.0, 1.0], dtype=torch.float64)[:, None, None]
        assert float((v_hooks - v_brute).norm() / v_brute.norm()) < 1e-10
        ihvps[p.name] = ihvp(v_brute, factors[p.name])
    got = hook_scores(model, candidates, points, ihvps, 3)
    bc = _brute_gradients(model, candidates, points)
    for i, grads in enumerate(bc):
        expected = torch.stack([-sum((ihvps[p.name][k] * grads[p.name]).sum() for p in points) for k in range(2)])
        assert float((got[i] - expected).norm() / expected.norm()) < 1e-5, i
    assert got[len(candidates) - 1][0] > 0  # a sample identical to a query raises that query's response


def test_low_rank_scores_match_full_rank_at_full_rank(tmp_path):
    model = tiny_model(tmp_path, "gpt2")
    samples = fit_set(4)
    points = tap_points(discover(model), "linfac")
    g = torch.Generator().manual_seed(0)
    full = {p.name: torch.randn(2, 16, 16, dtype=torch.float64, generator=g) for p in points}
    lowr = {}
    for name, x in full.items():
        parts = [low_rank(x[k], 16) for k in range(2)]
        lowr[name] = (torch.stack([u for u, _, _ in parts]), torch.stack([v for _, v, _ in parts]))
    a, b = (hook_scores(model, samples, points, ihvps, 2) for ihvps in (full, lowr))
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)



def test_identity_curvature_scores_are_gradient_inner_products(tmp_path):
    """`queries --curvature identity` (the no-curvature recall baseline): the stored IHVP is V_B itself, so a
    candidate's score on batch B is minus the inner product of its gradient with the batch's mean query
    gradient, as per-sample autograd gives it."""
    from lancet_ds.influence.queries import QueriesArgs, batch_ihvps

    model = tiny_model(tmp_path, "llama")
    samples = fit_set(5)
    points = tap_points(discover(model), "linfac")
    queries, candidates = samples[:3], samples[3:]
    ctx = BatchContext()
    qsums = QueryGradientSums(ctx, torch.float64, [0, 1, 0], 2)
    run_passes(model, queries, points, qsums, ctx, torch.float64, 2, 2, "empirical", 0)
    names = [p.name for p in points]
    tensors, dampings = {}, {}
    batch_ihvps(qsums, {}, {"damping": {"factor": 0.1}}, names, list(range(len(names))), [["a", "c"], ["b"]],
                QueriesArgs(curvature="identity"), tensors, dampings, {})
    assert set(dampings.values()) == {None}
    bq, bc = _brute_gradients(model, queries, points), _brute_gradients(model, candidates, points)
    for p in points:
        v = torch.stack([-(bq[0][p.name] + bq[2][p.name]) / 2, -bq[1][p.name]])
        for b in range(2):
            assert float((tensors[f"{p.name}.ihvp.{b}"] - v[b]).norm() / v[b].norm()) < 1e-10
    ihvps = {p.name: torch.stack([tensors[f"{p.name}.ihvp.{b}"] for b in range(2)]) for p in points}
    got = hook_scores(model, candidates, points, ihvps, 2)
    for i, grads in enumerate(bc):
        expected = torch.stack([-sum((ihvps[p.name][b] * grads[p.name]).sum() for p in points) for b in range(2)])
        assert float((got[i] - expected).norm() / expected.norm()) < 1e-5, i


def test_damping_factor_scales_each_sublayers_rule_and_the_ihvp_solves_with_it():
    """`queries --damping-factor f`: λ = f × the sublayer's mean curvature diagonal (in place of the factors'
    recorded 0.1), and the stored IHVP solves (Ŝ ⊗ Â + λI) x = v with that λ (dense check)."""
    from types import SimpleNamespace

    from lancet_ds.influence.queries import QueriesArgs, batch_ihvps

    A, S, f = _factors(5, 4, 5)
    v = torch.randn(1, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    lams = {}
    for factor in (None, 0.01, 1.0):
        tensors, dampings = {}, {}
        sums = SimpleNamespace(sums={"w": {"V": v.clone()}})
        batch_ihvps(sums, {"w": f}, {"damping": {"factor": 0.1}}, ["w"], [0], [["q"]], QueriesArgs(damping_factor=factor),
                    tensors, dampings, {})
        lams[factor] = lam = dampings["w"]
        x = tensors["w.ihvp.0"]
        assert torch.allclose(S @ x @ A.T + lam * x, v[0], atol=1e-10)
    mean_diag = float(torch.outer(f["LS"], f["LA"]).mean())
    assert lams[None] == pytest.approx(0.1 * mean_diag) and lams[0.01] == pytest.approx(0.01 * mean_diag)
    assert lams[1.0] == pytest.approx(mean_diag)


def test_damping_options_are_checked_and_recorded_only_when_given():
    from lancet_ds.influence.queries import QueriesArgs

    both = QueriesArgs(damping=1e-3, damping_factor=1.0).validate()
    assert any("give one of them" in p for p in both)
    assert any("damping_factor: must be > 0" in p for p in QueriesArgs(damping_factor=0.0).validate())
    assert "damping_factor" not in QueriesArgs().record()  # a record made before the option existed still matches
    assert QueriesArgs(damping_factor=1.0).record()["damping_factor"] == 1.0
    assert QueriesArgs(damping_factor=1.0).rule_factor({"damping": {"factor": 0.1}}) == 1.0
    assert QueriesArgs().rule_factor({"damping": {"factor": 0.1}}) == 0.1


def test_the_query_gradient_of_the_response_opening_equals_brute_force_on_its_first_tokens(tmp_path):
    """`queries --response-tokens n`: the query gradient is that of the log-likelihood of the first n response
    tokens alone (per-sample autograd on a mask built here), not of the whole response; n = 0, or n at least the
    response's length, leaves the query as it is."""
    from dataclasses import replace

    from lancet_ds.influence.queries import QueriesArgs, opening

    model = tiny_model(tmp_path, "llama")
    queries = fit_set(3, lengths=(9, 12))  # 5 to 10 response tokens each
    points = tap_points(discover(model), "linfac")
    n = 3
    cut = [opening(q, n) for q in queries]
    by_hand = []
    for q in queries:
        response = [t for t, m in enumerate(q.loss_mask) if m]
        assert len(response) > n
        by_hand.append(replace(q, loss_mask=[int(t in response[:n]) for t in range(len(q.loss_mask))]))
    assert [c.loss_mask for c in cut] == [h.loss_mask for h in by_hand]
    assert [c.input_ids for c in cut] == [q.input_ids for q in queries]
    ctx = BatchContext()
    qsums = QueryGradientSums(ctx, torch.float64, [0, 0, 0], 1)
    run_passes(model, cut, points, qsums, ctx, torch.float64, 2, 2, "empirical", 0)
    brute, whole = _brute_gradients(model, by_hand, points), _brute_gradients(model, queries, points)
    for p in points:
        v = -sum(g[p.name] for g in brute) / 3
        assert float((qsums.sums[p.name]["V"][0] / 3 - v).norm() / v.norm()) < 1e-10  # V sums the batch
        assert float((v + sum(g[p.name] for g in whole) / 3).norm() / v.norm()) > 0.1  # not the whole response's
    assert opening(queries[0], 0) is queries[0] and opening(queries[0], len(queries[0].loss_mask)) is queries[0]
    assert "response_tokens" not in QueriesArgs().record()  # a record made before the option existed still matches
    assert QueriesArgs(response_tokens=4).record()["response_tokens"] == 4
    assert any("response_tokens: must be ≥ 0" in p for p in QueriesArgs(response_tokens=-1).validate())
