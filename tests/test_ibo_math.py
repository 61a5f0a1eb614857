"""IBO objective terms against hand-computed values, and the D⁺ / D⁻ / neutral selection."""

from __future__ import annotations

import math

import pytest
import torch

from lancet_ds.ibo.objective import bregman_loss, correction_loss, nll, proximity
from lancet_ds.ibo.selection import select
from lancet_ds.ibo.step import unpairable_reason


def test_correction_loss_dpo_and_paper_forms():
    r_pos, r_neg = torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.3])
    i_pos, i_neg = torch.tensor([0.8, 1.0]), torch.tensor([-0.4, -0.6])
    u = [0.8 * 0.5 + -0.4 * 0.2, 1.0 * -1.0 + -0.6 * 0.3]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    dpo = -sum(math.log(sig(-x)) for x in u) / 2
    paper = sum(math.log(sig(x)) for x in u) / 2  # −ε·log σ(u) with ε = −1
    assert correction_loss(r_pos, r_neg, i_pos, i_neg) == pytest.approx(dpo, rel=1e-6)
    assert correction_loss(r_pos, r_neg, i_pos, i_neg, form="paper") == pytest.approx(paper, rel=1e-6)
    # ε = −1 corrects: the gradient pushes r(z⁺) down for a positive-influence sample
    r = torch.tensor([0.5], requires_grad=True)
    correction_loss(r, torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0])).backward()
    assert r.grad.item() > 0


def test_correction_loss_is_stable_for_large_margins():
    big = torch.tensor([1e4], dtype=torch.bfloat16)
    assert torch.isfinite(correction_loss(big, big, torch.tensor([1.0]), torch.tensor([-1.0])))
    assert correction_loss(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0])) < 1e-6


def test_bregman_loss_values_and_zero_at_the_reference():
    pol = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -0.1]])
    mask = torch.tensor([[1, 1, 0]])
    expected = ((math.exp(0.5) - 0.5 - 1) + 0.0) / 2
    assert bregman_loss(pol, ref, mask).item() == pytest.approx(expected, rel=1e-6)
    same = ref.clone().requires_grad_()
    loss = bregman_loss(same, ref, mask)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(same.grad == 0)


def test_proximity_value_and_its_gradient():
    p = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    q = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])]
    values, grads = zip(*(proximity(a, b, lam=0.5) for a, b in zip(p, q)))
    assert sum(v.item() for v in values) == pytest.approx(0.25 * (1 + 0 + 4))
    # the gradient it returns is the gradient of the value it returns
    sum(values).backward()
    for a, b, g in zip(p, q, grads):
        assert torch.allclose(g, 0.5 * (a.detach() - b))
        assert torch.allclose(a.grad, g.detach())


def test_nll_is_the_masked_token_mean():
    assert nll(torch.tensor([[-1.0, -3.0, -9.0]]), torch.tensor([[1, 1, 0]])).item() == pytest.approx(2.0)


ROWS = [{"id": "a", "score_0": 10.0, "score_1": -1.0}, {"id": "b", "score_0": 5.0, "score_1": 2.0},
        {"id": "c", "score_0": -20.0, "score_1": 1.0}, {"id": "d", "score_0": 0.0, "score_1": -3.0},
        {"id": "e", "score_0": 5.0, "score_1": 0.5}]


def test_topk_selection_per_batch_with_normalised_scores():
    s = select(ROWS, 2, "topk", k=1)
    assert s.max_abs == 20.0
    assert s.positive == {0: [("a", 0.5)], 1: [("b", 0.1)]}
    assert s.negative == {0: [("c", -1.0)], 1: [("d", -0.15)]}
    assert s.neutral == []  # e is unselected but influential (|Ĩ| = 0.25 on batch 0): in neither set
    assert select(ROWS, 2, "topk", k=1, neutral_threshold=0.3).neutral == ["e"]
    s2 = select(ROWS, 2, "topk", k=2)
    assert s2.positive[0] == [("a", 0.5), ("b", 0.25)]  # tie b/e at 0.25 broken by id


def test_a_sample_influential_both_ways_joins_the_side_of_its_total():
    keep = select(ROWS, 2, "topk", k=2, conflicts="keep")
    assert keep.positive[1] == [("b", 0.1), ("c", 0.05)] and keep.negative[1] == [("d", -0.15), ("a", -0.05)]
    assert keep.ids("positive") & keep.ids("negative") == {"a", "c"} and keep.conflicts == 2
    s = select(ROWS, 2, "topk", k=2)  # a: 0.5 − 0.05 > 0 stays positive; c: −1 + 0.05 < 0 stays negative
    assert s.positive == {0: [("a", 0.5), ("b", 0.25)], 1: [("b", 0.1), ("e", 0.025)]}
    assert s.negative == {0: [("c", -1.0)], 1: [("d", -0.15)]}
    assert not s.ids("positive") & s.ids("negative") and s.conflicts == 2
    with pytest.raises(ValueError, match="conflicts must be one of"):
        select(ROWS, 2, "topk", conflicts="both")


def test_negative_ceiling_keeps_a_sample_that_raises_any_batch_out_of_d_minus():
    # Ĩ: a (0.5, −0.05), b (0.25, 0.1), c (−1, 0.05), d (0, −0.15), e (0.25, 0.025)
    assert select(ROWS, 2, "topk", k=2, negative_ceiling=0.06).negative == {0: [("c", -1.0)], 1: [("d", -0.15)]}
    s = select(ROWS, 2, "topk", k=2, negative_ceiling=0.05)  # c reaches 0.05 on batch 1: never raised
    assert s.negative == {0: [], 1: [("d", -0.15)]} and s.barred == 1
    assert s.positive == select(ROWS, 2, "topk", k=2).positive and "c" not in s.neutral
    keep = select(ROWS, 2, "topk", k=2, conflicts="keep", negative_ceiling=0.05)  # a (0.5 on batch 0) too
    assert keep.negative == {0: [], 1: [("d", -0.15)]} and keep.barred == 2
    none = select(ROWS, 2, "topk", k=2, negative_ceiling=0.0)  # d's Ĩ is 0 on batch 0: nothing is left
    assert not none.ids("negative") and none.barred == 2
    assert "a higher --negative-ceiling (it kept 2 samples out of D⁻)" in unpairable_reason(none)


def test_positive_judge_keeps_what_it_does_not_flag_out_of_d_plus():
    # Ĩ: a (0.5, −0.05), b (0.25, 0.1), c (−1, 0.05), d (0, −0.15), e (0.25, 0.025); a is not flagged
    s = select(ROWS, 2, "topk", k=2, harmful={"b", "c", "d", "e"})
    assert s.positive == {0: [("b", 0.25), ("e", 0.25)], 1: [("b", 0.1), ("e", 0.025)]} and s.unflagged == 1
    assert s.negative == select(ROWS, 2, "topk", k=2).negative and "a" not in s.neutral and s.barred == 0
    # per batch (conflicts="keep"), c is in D⁺ for batch 1: unflagged, e takes its place; D⁻ keeps c
    keep = select(ROWS, 2, "topk", k=2, conflicts="keep", harmful={"a", "b", "d", "e"})
    assert keep.positive == {0: [("a", 0.5), ("b", 0.25)], 1: [("b", 0.1), ("e", 0.025)]} and keep.unflagged == 1
    assert keep.negative == select(ROWS, 2, "topk", k=2, conflicts="keep").negative
    nothing = select(ROWS, 2, "topk", k=2, harmful=set())
    assert not nothing.ids("positive") and nothing.unflagged == 3  # a, b, e would have entered
    both = select(ROWS, 2, "topk", k=2, negative_ceiling=0.05, harmful={"b", "c", "d", "e"})
    assert (both.positive, both.unflagged) == (s.positive, 1) and (both.negative, both.barred) == (
        {0: [], 1: [("d", -0.15)]}, 1)


def test_judge_flags_keep_samples_out_of_d_minus_too():
    # Ĩ: a (0.5, −0.05), b (0.25, 0.1), c (−1, 0.05), d (0, −0.15), e (0.25, 0.025); the judge flags c
    s = select(ROWS, 2, "topk", k=2, not_negative={"c"})
    assert s.negative == {0: [], 1: [("d", -0.15)]} and s.barred == 1 and "c" not in s.neutral
    assert s.positive == select(ROWS, 2, "topk", k=2).positive
    # per batch, a (−0.05 on batch 1) takes d's place once d is barred; a flagged id outside the scores is ignored
    keep = select(ROWS, 2, "topk", k=2, conflicts="keep", not_negative={"d", "z"})
    assert keep.negative == {0: [("c", -1.0)], 1: [("a", -0.05)]} and keep.barred == 1
    ceiling = select(ROWS, 2, "topk", k=2, negative_ceiling=0.05, not_negative={"d"})  # c by the ceiling, d flagged
    assert not ceiling.ids("negative") and ceiling.barred == 2


def test_pareto_selection_takes_the_smallest_set_carrying_the_mass():
    s = select(ROWS, 2, "pareto", pareto_mass=0.6)
    assert [i for i, _ in s.positive[0]] == ["a", "b"]  # 10 of 20 is not 60 %, 15 of 20 is
    assert [i for i, _ in s.negative[1]] == ["d"]  # 3 of 4
    with pytest.raises(ValueError, match="selection must be one of"):
        select(ROWS, 2, "random")
