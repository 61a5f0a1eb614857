"""95 % intervals for the evaluation's rates and scores (DESIGN.md section 9; issue 13 item 5): a
percentile bootstrap over PROMPTS (Efron & Tibshirani 1993, ch. 13), each prompt's n generations
resampled together, since generations of one prompt are not independent; seeded, so a report
reproduces. Vectorised: the n_boot resamples are one index matrix."""

from __future__ import annotations

from typing import Callable

import numpy as np

Stat = Callable[..., np.ndarray]


def _groups(values_by_prompt, where: str) -> list[np.ndarray]:
    """One 1-D float array per prompt."""
    groups = [np.asarray(v, dtype=np.float64).reshape(-1) for v in values_by_prompt]
    if not groups:
        raise ValueError(f"{where}: no prompts; give one list of values per prompt.")
    return groups


def _resamples(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_prompts] prompt indices drawn with replacement."""
    if n_boot < 1:
        raise ValueError(f"n_boot is {n_boot}; give at least 1 resample.")
    return np.random.default_rng(seed).integers(0, n_prompts, size=(n_boot, n_prompts))


def _boot_stats(groups: list[np.ndarray], idx: np.ndarray, stat: Stat) -> np.ndarray:
    """`stat` of the pooled values of each resample's prompts: one gather when every prompt has the same
    number of values, per-prompt sums and counts for a ragged mean, else a loop over resamples."""
    sizes = np.array([len(g) for g in groups])
    if (sizes == sizes[0]).all():
        pooled = np.stack(groups)[idx].reshape(len(idx), -1)
        return np.asarray(stat(pooled, axis=1), dtype=np.float64)
    if stat is np.mean:
        sums = np.array([g.sum() for g in groups])
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    return np.array([stat(np.concatenate([groups[i] for i in row])) for row in idx], dtype=np.float64)


def percentile_interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of a bootstrap distribution (its percentiles)."""
    if not 0 < level < 1:
        raise ValueError(f"level is {level}; give a coverage in (0, 1), such as 0.95.")
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_ci(values_by_prompt: list[list[float]] | np.ndarray, stat: Stat = np.mean, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): `stat` of all values and its percentile bootstrap interval, resampling
    prompts with replacement. `values_by_prompt[i]` holds prompt i's values (say its n generations' harm
    flags or scores); `stat` must accept `axis=` (as numpy's reductions do) when every prompt has the
    same number of values."""
    groups = _groups(values_by_prompt, "bootstrap_ci")
    estimate = float(stat(np.concatenate(groups)))
    boot = _boot_stats(groups, _resamples(len(groups), n_boot, seed), stat)
    return (estimate, *percentile_interval(boot, level))


def paired_difference_ci(a_by_prompt: list[list[float]] | np.ndarray, b_by_prompt: list[list[float]] | np.ndarray,
                         stat: Stat = np.mean, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """(diff, low, high) for stat(a) − stat(b), two models measured on the SAME prompts (in the same
    order): each resample draws one set of prompts for both, so the prompts' shared difficulty cancels."""
    a, b = _groups(a_by_prompt, "paired_difference_ci"), _groups(b_by_prompt, "paired_difference_ci")
    if len(a) != len(b):
        raise ValueError(f"paired_difference_ci: {len(a)} prompts for a but {len(b)} for b; pair the same "
                         "prompts, in the same order.")
    diff = float(stat(np.concatenate(a)) - stat(np.concatenate(b)))
    boot_a, boot_b = resampled_stats([a, b], stat, n_boot, seed, "paired_difference_ci")  # the groups, as built
    return (diff, *percentile_interval(boot_a - boot_b, level))


def resampled_stats(models_by_prompt: list, stat: Stat = np.mean, n_boot: int = 1000, seed: int = 0,
                    where: str = "resampled_stats") -> list[np.ndarray]:
    """`stat` of each model's values on each of `n_boot` resamples of the prompts: ONE draw of prompts for all the
    models, which were measured on the same prompts in the same order (`models_by_prompt[m][i]`: model m's values
    on prompt i), so what the prompts share cancels in any figure that compares them."""
    groups = [_groups(m, where) for m in models_by_prompt]
    if len({len(g) for g in groups}) != 1:
        raise ValueError(f"{where}: {[len(g) for g in groups]} prompts per model; measure every model on the same "
                         "prompts, in the same order.")
    idx = _resamples(len(groups[0]), n_boot, seed)
    return [_boot_stats(g, idx, stat) for g in groups]


def perplexity_ratio_ci(base_sums, sums, counts, level: float = 0.95, n_boot: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): a model's perplexity on a clean set over a base model's on the same samples,
    exp((Σ_i log p_base(y_i) − Σ_i log p(y_i)) / Σ_i |y_i|), and its percentile interval by a paired bootstrap
    over the samples (each resample draws one set of samples for both models; `high` of the 2g − 1 interval
    is the one-sided upper bound at g). A few samples can carry most of a correction's damage, so the ratio
    on a hundred samples can sit well below the ratio on the distribution they come from. `level` 0: no
    resampling, the interval is the ratio itself."""
    base, own, n = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (base_sums, sums, counts))
    if not len(base) == len(own) == len(n) or not len(n):
        raise ValueError(f"perplexity_ratio_ci: {len(base)} base sums, {len(own)} sums and {len(n)} token counts; "
                         "give one of each per clean sample, the same samples in the same order.")
    gain = base - own
    ratio = float(np.exp(gain.sum() / n.sum()))
    if level == 0:
        return ratio, ratio, ratio
    return (ratio, *percentile_interval(np.exp(_token_means(gain, n, n_boot, seed)), level))


def _token_means(sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Σ sums / Σ counts of each of `n_boot` resamples of the items, drawn with replacement."""
    idx = _resamples(len(counts), n_boot, seed)
    return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)


def token_mean_ci(sums, counts, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): a per-token mean over items of different lengths, Σ_i s_i / Σ_i |y_i| (say the response
    log-prob per token of a set of queries or clean samples, `s_i` item i's summed log-prob and `counts[i]` its
    tokens), and its percentile bootstrap interval over the items (each resample draws whole items, so a long
    item keeps its weight)."""
    own, n = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (sums, counts))
    if len(own) != len(n) or not len(n):
        raise ValueError(f"token_mean_ci: {len(own)} sums and {len(n)} token counts; give one of each per item.")
    return (float(own.sum() / n.sum()), *percentile_interval(_token_means(own, n, n_boot, seed), level))


def differs(low: float, high: float) -> bool:
    """Whether an interval (of a difference) excludes 0."""
    return bool(low > 0 or high < 0)
