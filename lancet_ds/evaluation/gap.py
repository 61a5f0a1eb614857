"""The share of the impure → safe gap a correction closes (issue 14's `gap_closed`; the paper's Table 3 read
as a fraction): one definition for the quality bench's rows and the report's per-category table."""

from __future__ import annotations


def gap_closed(impure: dict, safe: dict, corrected: dict, key: str = "harmful_score") -> float | None:
    """(impure − corrected) / (impure − safe) on `key`: 1 = as good as the safe model, 0 = no change; None when a
    row lacks `key` or impure and safe do not differ."""
    if any(row.get(key) is None for row in (impure, safe, corrected)) or abs(impure[key] - safe[key]) < 1e-12:
        return None
    return (impure[key] - corrected[key]) / (impure[key] - safe[key])
