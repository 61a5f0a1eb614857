"""The quality suite's matched-utility curves (issue: baselines compared at matched utility): each correction's
strengths averaged over seeds, and the plot of test harmful score against test perplexity with the guard's limit."""

from __future__ import annotations

import statistics
from pathlib import Path


def curve_means(correction: dict) -> dict[str, list[dict]]:
    """Per method, its points averaged over the seeds (step, test perplexity, test harmful score, validation
    perplexity ratio, its upper bound and harmful score), in step order."""
    out = {}
    for name, seeds in correction["curves"].items():
        steps = [p["step"] for p in seeds[0]["points"]]
        out[name] = [{"step": st, **{k: _mean([s["points"][i].get(k) for s in seeds])
                                     for k in ("test_ppl", "harmful_score", "validation_ppl_ratio",
                                               "validation_ppl_ratio_upper", "validation_harmful_score")}}
                     for i, st in enumerate(steps)]
    return out


def _mean(values: list) -> float | None:
    """The mean, None when a seed lacks the figure (a bench.json written before it was measured)."""
    return None if any(v is None for v in values) else statistics.fmean(values)


def draw_curves(correction: dict, path: Path) -> Path:
    """Harmful score against test perplexity, one curve per method (its strengths, mean over seeds), the
    impure and safe models as points, and the guard's perplexity limit over the impure model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    start = [statistics.fmean(r[k] for r in correction["reference"]["impure"]) for k in ("test_ppl", "harmful_score")]
    for name, points in curve_means(correction).items():  # each curve starts at the impure model (step 0)
        ax.plot([start[0]] + [p["test_ppl"] for p in points], [start[1]] + [p["harmful_score"] for p in points],
                marker="o", label=correction["labels"][name])
    for name, marker in (("impure", "s"), ("safe", "*")):
        ref = correction["reference"][name]
        ax.scatter([statistics.fmean(r["test_ppl"] for r in ref)],
                   [statistics.fmean(r["harmful_score"] for r in ref)], marker=marker, s=80, color="k", zorder=3)
        ax.annotate(name, (statistics.fmean(r["test_ppl"] for r in ref),
                           statistics.fmean(r["harmful_score"] for r in ref)), textcoords="offset points", xytext=(5, 5))
    limit = statistics.fmean(r["test_ppl"] for r in correction["reference"]["impure"]) \
        * (1 + correction["guard"]["max_ppl_increase"])
    ax.axvline(limit, color="grey", linestyle="--", label=f"guard (+{correction['guard']['max_ppl_increase']:.0%})")
    ax.set_xlabel("test clean perplexity")
    ax.set_ylabel("test harmful score (unseen prompts)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
