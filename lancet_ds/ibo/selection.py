"""Selection of the IBO training sets from the influence scores (DESIGN.md section 3, Eq. 14).

Scores are normalised, Ĩ(z, B) = I(z, B) / max over all scored (z, B) of |I|. Per query batch B:
`topk` puts the k most positive samples (Ĩ > 0) in D⁺_B and the k most negative (Ĩ < 0) in D⁻_B;
`pareto` takes, on each side, the smallest set (largest |Ĩ| first) that carries `pareto_mass` of the
side's total |Ĩ|. D⁺ and D⁻ are the unions over batches; a correction pair (z⁺, z⁻) is drawn within
one batch and uses that batch's Ĩ. The neutral set D∖D_IF is the scored samples whose |Ĩ| stays below
`neutral_threshold` on every batch ("influence near zero means not influential"; a replay sample of
the corpus joins it); an influential sample just outside the top-k is in neither, since L_BD would
hold it at the reference. Ties are broken by sample id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SELECTIONS = ("topk", "pareto")


@dataclass
class Selection:
    positive: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # batch → [(id, Ĩ)]
    negative: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    neutral: list[str] = field(default_factory=list)
    max_abs: float = 0.0

    def ids(self, side: str) -> set[str]:
        groups = self.positive if side == "positive" else self.negative
        return {i for members in groups.values() for i, _ in members}


def normalised(rows: list[dict], n_batches: int) -> tuple[dict[str, list[float]], float]:
    """{id: [Ĩ(z, B) for B]} and max |I|."""
    raw = {r["id"]: [float(r[f"score_{b}"]) for b in range(n_batches)] for r in rows}
    top = max((abs(v) for vs in raw.values() for v in vs), default=0.0)
    scale = top if top > 0 else 1.0
    return {k: [v / scale for v in vs] for k, vs in raw.items()}, top


def _pareto(side: list[tuple[str, float]], mass: float) -> list[tuple[str, float]]:
    total = sum(abs(v) for _, v in side)
    chosen, acc = [], 0.0
    for item in side:
        if acc >= mass * total:
            break
        chosen.append(item)
        acc += abs(item[1])
    return chosen


def select(rows: list[dict], n_batches: int, how: str = "topk", k: int = 16, pareto_mass: float = 0.8,
           neutral_threshold: float = 0.05) -> Selection:
    """D⁺_B, D⁻_B per batch and the neutral set, from score rows (`id`, `score_<b>`)."""
    if how not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {how!r}")
    scores, top = normalised(rows, n_batches)
    out = Selection(max_abs=top)
    for b in range(n_batches):
        pos = sorted(((i, s[b]) for i, s in scores.items() if s[b] > 0), key=lambda x: (-x[1], x[0]))
        neg = sorted(((i, s[b]) for i, s in scores.items() if s[b] < 0), key=lambda x: (x[1], x[0]))
        if how == "topk":
            out.positive[b], out.negative[b] = pos[:k], neg[:k]
        else:
            out.positive[b], out.negative[b] = _pareto(pos, pareto_mass), _pareto(neg, pareto_mass)
    selected = out.ids("positive") | out.ids("negative")
    out.neutral = sorted(i for i, s in scores.items() if i not in selected and max(map(abs, s)) < neutral_threshold)
    return out
