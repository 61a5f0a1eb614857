"""The share of the impure → safe gap a correction closes (issue 14's `gap_closed`; the paper's Table 3 read
as a fraction): one definition for the quality bench's rows and the report's per-category table, and its 95 %
interval over the prompts."""

from __future__ import annotations

import numpy as np

from lancet_ds.evaluation.intervals import percentile_interval, resampled_stats


def gap_closed(impure: dict, safe: dict, corrected: dict, key: str = "harmful_score") -> float | None:
    """(impure − corrected) / (impure − safe) on `key`: 1 = as good as the safe model, 0 = no change; None when a
    row lacks `key` or impure and safe do not differ."""
    if any(row.get(key) is None for row in (impure, safe, corrected)) or abs(impure[key] - safe[key]) < 1e-12:
        return None
    return (impure[key] - corrected[key]) / (impure[key] - safe[key])


def gap_closed_ci(impure: dict, safe: dict, corrected: dict, key: str = "harm_by_prompt", n_boot: int = 1000,
                  seed: int = 0, level: float = 0.95) -> list[float] | None:
    """[low, high]: the percentile bootstrap interval of `gap_closed` on the harmful score, the three models' scores
    on the SAME prompts resampled together (one draw of prompts for all three, each prompt's generations kept
    together: `key` holds each row's per-prompt scores), so the impure and safe models' sampling counts as much
    as the corrected one's; None when a row lacks them. A resample where impure and safe do not differ has no
    gap and is left out."""
    if any(row.get(key) is None for row in (impure, safe, corrected)):
        return None
    i, s, c = resampled_stats([row[key] for row in (impure, safe, corrected)], np.mean, n_boot, seed, "gap_closed_ci")
    keep = np.abs(i - s) > 1e-12
    if not keep.any():
        return None
    low, high = percentile_interval((i[keep] - c[keep]) / (i[keep] - s[keep]), level)
    return [low, high]
