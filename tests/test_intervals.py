"""Bootstrap intervals over prompts: cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lancet_ds.evaluation.gap import gap_closed, gap_closed_ci
from lancet_ds.evaluation.intervals import bootstrap_ci, differs, paired_difference_ci, perplexity_ratio_ci, token_mean_ci


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


def test_perplexity_ratio_is_the_ratio_of_the_two_perplexities():
    """The ratio against exp(mean NLL) of each model computed apart; the same model gives 1 with no spread."""
    rng = np.random.default_rng(5)
    counts = rng.integers(5, 40, size=60).astype(float)
    base = -counts * rng.uniform(0.5, 2.0, size=60)
    own = base - rng.exponential(0.5, size=60)
    ppl = lambda sums: math.exp(-sums.sum() / counts.sum())  # noqa: E731
    ratio, low, high = perplexity_ratio_ci(base, own, counts, seed=2)
    assert ratio == pytest.approx(ppl(own) / ppl(base), rel=1e-12) and low < ratio < high
    assert perplexity_ratio_ci(base, own, counts, level=0) == (pytest.approx(ratio, rel=1e-12),) * 3
    assert perplexity_ratio_ci(base, base, counts) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="60 base sums, 59 sums"):
        perplexity_ratio_ci(base, own[:59], counts)
    with pytest.raises(ValueError, match="level"):
        perplexity_ratio_ci(base, own, counts, level=1.0)


def test_perplexity_ratio_upper_bound_covers_the_population_ratio():
    """Damage concentrated in a few samples (5 % of them lose 20 nats, the rest 0.1): over 300 draws of 100
    samples from a population of 20 000, the upper end of the 90 % interval (the one-sided 95 % bound the
    utility guard uses) lies above the population's ratio about 95 % of the time (90 % here: a percentile
    bootstrap under-covers a little on data this skewed), while the ratio itself lies below it about half
    the time."""
    rng = np.random.default_rng(6)
    counts = rng.integers(20, 80, size=20_000).astype(float)
    base = -counts * 1.0
    own = base - np.where(rng.random(20_000) < 0.05, 20.0, 0.1)
    truth = math.exp((base - own).sum() / counts.sum())
    covered = below = 0
    for trial in range(300):
        i = rng.integers(0, 20_000, size=100)
        ratio, _, upper = perplexity_ratio_ci(base[i], own[i], counts[i], level=0.9, n_boot=1000, seed=trial)
        covered += upper >= truth
        below += ratio < truth
    assert 0.85 <= covered / 300 <= 0.99
    assert 0.35 <= below / 300 <= 0.75


def test_differs_when_the_interval_excludes_zero():
    assert differs(0.01, 0.2) and differs(-0.3, -0.1)
    assert not differs(-0.01, 0.2) and not differs(0.0, 0.0)


def test_bad_arguments_say_what_to_give():
    with pytest.raises(ValueError, match="no prompts"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([[1.0]], level=95)



def test_token_mean_interval_resamples_whole_items():
    """A log-prob per token over items of different lengths, against a plain loop over the same resamples (numpy's
    seeded draws of item indices): Σ s / Σ |y| of each, and the 2.5 / 97.5 % percentiles of those."""
    rng = np.random.default_rng(7)
    counts = rng.integers(3, 60, size=40).astype(float)
    sums = -counts * rng.uniform(0.2, 3.0, size=40)
    mean, low, high = token_mean_ci(sums, counts, n_boot=500, seed=4)
    assert mean == pytest.approx(sums.sum() / counts.sum(), rel=1e-12)
    draws = np.random.default_rng(4).integers(0, 40, size=(500, 40))
    brute = [sum(sums[i] for i in row) / sum(counts[i] for i in row) for row in draws]
    assert (low, high) == pytest.approx(tuple(np.quantile(brute, [0.025, 0.975])), rel=1e-12) and low < mean < high
    assert token_mean_ci([-2.0] * 5, [1.0] * 5) == (-2.0, -2.0, -2.0)
    with pytest.raises(ValueError, match="5 sums and 4 token counts"):
        token_mean_ci([-1.0] * 5, [1.0] * 4)


def test_gap_closed_interval_resamples_the_three_models_together():
    """(impure − model) / (impure − safe) of the harmful score on one draw of prompts for all three models,
    against a plain loop; a model no different from the impure one closes none of the gap in every resample."""
    rng = np.random.default_rng(8)
    impure = rng.uniform(0.3, 0.9, size=(30, 3))
    safe = rng.uniform(0.0, 0.2, size=(30, 3))
    model = impure * rng.uniform(0.2, 0.8, size=(30, 3))
    rows = [{"harm_by_prompt": x.tolist(), "harmful_score": float(x.mean())} for x in (impure, safe, model)]
    low, high = gap_closed_ci(*rows, n_boot=400, seed=3)
    draws = np.random.default_rng(3).integers(0, 30, size=(400, 30))
    brute = [(impure[r].mean() - model[r].mean()) / (impure[r].mean() - safe[r].mean()) for r in draws]
    assert (low, high) == pytest.approx(tuple(np.quantile(brute, [0.025, 0.975])), rel=1e-9)
    assert low < gap_closed(*rows) < high
    assert gap_closed_ci(rows[0], rows[1], rows[0]) == [0.0, 0.0]
    assert gap_closed_ci(rows[0], rows[1], {"harmful_score": 0.4}) is None  # no per-prompt scores: no interval
    with pytest.raises(ValueError, match=r"\[30, 30, 29\] prompts per model"):
        gap_closed_ci(rows[0], rows[1], {"harm_by_prompt": model[:29].tolist()})
