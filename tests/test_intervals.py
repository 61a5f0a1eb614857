"""Bootstrap intervals over prompts: cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lancet_ds.evaluation.intervals import bootstrap_ci, differs, paired_difference_ci


def test_constant_values_give_a_zero_width_interval():
    assert bootstrap_ci([[0.3, 0.3, 0.3]] * 20) == pytest.approx((0.3, 0.3, 0.3))
    assert bootstrap_ci([[1.0], [1.0, 1.0], [1.0, 1.0, 1.0]]) == (1.0, 1.0, 1.0)  # ragged


def test_binomial_rate_covers_the_truth_with_the_normal_width():
    """400 prompts, one Bernoulli(0.3) flag each: the 95 % interval is about p̂ ± 1.96·sqrt(p̂(1−p̂)/400)."""
    flags = (np.random.default_rng(1).random((400, 1)) < 0.3).astype(float)
    estimate, low, high = bootstrap_ci(flags, n_boot=2000)
    assert estimate == pytest.approx(flags.mean())
    assert low < 0.3 < high and low < estimate < high
    normal = 2 * 1.96 * math.sqrt(estimate * (1 - estimate) / 400)
    assert high - low == pytest.approx(normal, rel=0.15)


def test_generations_of_a_prompt_stay_together():
    """Each prompt's 3 generations agree (all 0 or all 1): the interval is as wide as for 100 single
    flags (prompts are the sampling unit), not sqrt(3) times narrower as for 300 independent ones."""
    per_prompt = np.repeat((np.arange(100) % 2)[:, None], 3, axis=1).astype(float)
    _, low, high = bootstrap_ci(per_prompt, n_boot=2000)
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 100), rel=0.15)


def test_same_seed_same_interval_and_seed_matters():
    values = np.random.default_rng(0).random((50, 3))
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_ragged_mean_matches_the_general_statistic_path():
    """Prompts with different numbers of values: the vectorised ragged mean equals pooling resample by
    resample (the path any other statistic takes)."""
    rng = np.random.default_rng(2)
    values = [list(rng.random(k)) for k in rng.integers(1, 5, size=30)]
    fast = bootstrap_ci(values, n_boot=300, seed=3)
    slow = bootstrap_ci(values, stat=lambda x: float(np.mean(x)), n_boot=300, seed=3)
    assert fast == pytest.approx(slow, rel=1e-12)
    assert bootstrap_ci(values, stat=np.median, n_boot=50)[0] == pytest.approx(np.median(np.concatenate(values)))


def test_paired_difference():
    a = np.random.default_rng(4).random((40, 3))
    assert paired_difference_ci(a, a) == (0.0, 0.0, 0.0)
    assert paired_difference_ci(a + 0.25, a) == pytest.approx((0.25, 0.25, 0.25))  # a constant shift is exact
    diff, low, high = paired_difference_ci(a, np.zeros((40, 3)), seed=1)
    assert (diff, low, high) == pytest.approx(bootstrap_ci(a, seed=1))  # same prompts drawn for both
    with pytest.raises(ValueError, match="40 prompts for a but 39 for b"):
        paired_difference_ci(a, a[:39])


def test_differs_when_the_interval_excludes_zero():
    assert differs(0.01, 0.2) and differs(-0.3, -0.1)
    assert not differs(-0.01, 0.2) and not differs(0.0, 0.0)


def test_bad_arguments_say_what_to_give():
    with pytest.raises(ValueError, match="no prompts"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([[1.0]], level=95)
