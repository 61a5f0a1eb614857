"""Selection of the IBO training sets from the influence scores (DESIGN.md section 3, Eq. 14).

Scores are normalised, Ĩ(z, B) = I(z, B) / max over all scored (z, B) of |I|. Per query batch B:
`topk` puts the k most positive samples (Ĩ > 0) in D⁺_B and the k most negative (Ĩ < 0) in D⁻_B;
`pareto` takes, on each side, the smallest set (largest |Ĩ| first) that carries `pareto_mass` of the
side's total |Ĩ|. D⁺ and D⁻ are the unions over batches; a correction pair (z⁺, z⁻) is drawn within
one batch and uses that batch's Ĩ. The neutral set D∖D_IF is the scored samples whose |Ĩ| stays below
`neutral_threshold` on every batch ("influence near zero means not influential"; a replay sample of
the corpus joins it); an influential sample just outside the top-k is in neither, since L_BD would
hold it at the reference. Ties are broken by sample id.

A sample can raise one query batch's behaviour and lower another's. With `conflicts="by_total"` (the
default) it may only join the side of its total influence Σ_B Ĩ(z, B): IBO never raises for one batch
the likelihood of a sample it lowers for another (the paper's per-batch rule, `conflicts="keep"`, does;
`Selection.conflicts` counts the samples the per-batch rule would have put on both sides).

`negative_ceiling` τ goes further on the side where a mistake does harm: L_COR raises the likelihood of D⁻, so
a sample whose Ĩ reaches τ on any batch (it raises that batch's behaviour) never enters D⁻, whatever its
total; `Selection.barred` counts the samples this keeps out of a D⁻_B they would otherwise have joined.
`not_negative` (the ids a harm judge flags, `correct --judge-bars-negative`) bars samples from D⁻ the same way
and is counted with them.

`harmful` does the same for D⁺, where a mistake lowers the likelihood of a good answer: given the ids a harm
judge flags (the cost model of the paper's Section 4.1, `ibo.positive_filter`), only they may enter D⁺. A
refusal that quotes the forbidden act can raise the undesirable responses' likelihood as much as the harmful
answers do; IBO would unlearn it along with them. `Selection.unflagged` counts the samples this keeps out of a
D⁺_B they would otherwise have joined; in both cases the next-ranked allowed sample takes the place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SELECTIONS = ("topk", "pareto")
CONFLICTS = ("by_total", "keep")


@dataclass
class Selection:
    positive: dict[int, list[tuple[str, float]]] = field(default_factory=dict)  # batch → [(id, Ĩ)]
    negative: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    neutral: list[str] = field(default_factory=list)
    max_abs: float = 0.0
    conflicts: int = 0  # samples the per-batch rule puts in D⁺ for one batch and D⁻ for another
    barred: int = 0  # samples `negative_ceiling` keeps out of D⁻
    unflagged: int = 0  # samples `harmful` keeps out of D⁺ (the judge does not flag them)

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


def _per_batch(scores: dict[str, list[float]], n_batches: int, how: str, k: int, pareto_mass: float,
               side_of: dict[str, int] | None, barred: frozenset[str] | set[str] = frozenset(),
               unflagged: frozenset[str] | set[str] = frozenset()) -> tuple[dict, dict]:
    """D⁺_B and D⁻_B for every batch; with `side_of`, a sample only enters the side it is assigned (+1/−1);
    a `barred` sample never enters D⁻, an `unflagged` one never D⁺."""
    def allowed(i: str, sign: int) -> bool:
        return (side_of is None or side_of[i] == sign) and i not in (barred if sign < 0 else unflagged)

    positive, negative = {}, {}
    for b in range(n_batches):
        pos = sorted(((i, s[b]) for i, s in scores.items() if s[b] > 0 and allowed(i, 1)), key=lambda x: (-x[1], x[0]))
        neg = sorted(((i, s[b]) for i, s in scores.items() if s[b] < 0 and allowed(i, -1)), key=lambda x: (x[1], x[0]))
        if how == "topk":
            positive[b], negative[b] = pos[:k], neg[:k]
        else:
            positive[b], negative[b] = _pareto(pos, pareto_mass), _pareto(neg, pareto_mass)
    return positive, negative


def select(rows: list[dict], n_batches: int, how: str = "topk", k: int = 16, pareto_mass: float = 0.8,
           neutral_threshold: float = 0.05, conflicts: str = "by_total",
           negative_ceiling: float | None = None, harmful: set[str] | None = None,
           not_negative: set[str] | None = None) -> Selection:
    """D⁺_B, D⁻_B per batch and the neutral set, from score rows (`id`, `score_<b>`); `harmful`: the ids that may
    enter D⁺ (None: all); `not_negative`: ids that may never enter D⁻ (None: none)."""
    if how not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {how!r}")
    if conflicts not in CONFLICTS:
        raise ValueError(f"conflicts must be one of {CONFLICTS}, got {conflicts!r}")
    scores, top = normalised(rows, n_batches)
    out = Selection(max_abs=top)
    out.positive, out.negative = _per_batch(scores, n_batches, how, k, pareto_mass, None)
    both = out.ids("positive") & out.ids("negative")
    out.conflicts = len(both)
    side_of = None
    if conflicts == "by_total" and both:
        side_of = {i: (1 if sum(s) > 0 else -1 if sum(s) < 0 else 0) for i, s in scores.items()}
        out.positive, out.negative = _per_batch(scores, n_batches, how, k, pareto_mass, side_of)
    barred = {i for i, s in scores.items() if max(s) >= negative_ceiling} if negative_ceiling is not None else set()
    barred |= set(not_negative or ())
    unflagged = set(scores) - harmful if harmful is not None else set()
    out.barred, out.unflagged = len(out.ids("negative") & barred), len(out.ids("positive") & unflagged)
    if barred or unflagged:
        out.positive, out.negative = _per_batch(scores, n_batches, how, k, pareto_mass, side_of, barred, unflagged)
    selected = out.ids("positive") | out.ids("negative")
    out.neutral = sorted(i for i, s in scores.items() if i not in selected and max(map(abs, s)) < neutral_threshold)
    return out
