"""The capacity model of the influence stages (DESIGN.md section 4): from the tap points' shapes alone,
the bytes each rank keeps resident in `fit`, `queries` and `score`, the partitions a per-rank memory
budget asks for, and the peak each rank will reach. The stages schedule their work with these same
functions and measure what they really held (`memory.Peak`); `lancet-ds plan` prints them for a model
the user has not downloaded.

Ownership: tap point k belongs to rank k mod W. Factor sums are reduced to their owner; only owners
keep a point's normalised Â, Ŝ (accumulation dtype), eigenbases and eigenvalues (float64) and Λ̂, so
the resident factors fall as 1/W. What every rank needs at once — every point's running sums during a
pass, every point's eigenbases in the correction pass, every point's query-gradient sums V_B, every
(point, batch) IHVP in scoring — is processed in partitions sized to what the budget leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from lancet_ds import distributed as dist_utils
from lancet_ds.errors import ConfigError
from lancet_ds.influence.memory import DTYPE_BYTES, Item, partition, point_dims
from lancet_ds.influence.pass_scale import scales
from lancet_ds.modeling import zero_stage

F64 = 8
ADVICE = ("Raise --memory-budget, run on more ranks (owned factors and IHVPs fall as 1/ranks), lower "
          "micro_batch, or, for IHVPs, set --ihvp-rank.")


@dataclass(frozen=True)
class Point:
    """A tap point and the shape (P × M) of its modular gradients."""

    name: str
    P: int
    M: int


def owned(points: list[Point], world: int, rank: int) -> list[int]:
    """Indices of the points `rank` owns (`distributed.owner`)."""
    return [k for k in range(len(points)) if dist_utils.owner(k, world) == rank]


def _capacity(budget: int | None, fixed: int, resident: int) -> int | None:
    return None if budget is None else budget - fixed - resident


def _names(groups: list[list[Item]]) -> list[list]:
    return [[i.key for i in g] for g in groups]


# ---- fit -------------------------------------------------------------------------------------------
def fit_sizes(p: Point, dtype: str, corrected: bool) -> dict[str, int]:
    """Bytes of one point's fit tensors: running sums and normalised Â, Ŝ (dtype), eigenbases Q (float64),
    eigenvalues (float64), the bases cast to dtype in the correction pass, and Λ̂ (dtype, when corrected)."""
    b = DTYPE_BYTES[dtype]
    square = p.M * p.M + p.P * p.P
    return {"sums": square * b, "AS": square * b, "Q": square * F64, "L": (p.M + p.P) * F64,
            "cast": square * b if b != F64 else 0, "Lambda": p.P * p.M * b if corrected else 0}


def fit_schedule(points: list[Point], world: int, dtype: str, corrected: bool, budget: int | None = None,
                 fixed: int = 0, factors_on: str = "device") -> dict:
    """The fit's partitions (the same on every rank) and each rank's predicted peak of resident bytes on the
    device (`peak_bytes`, what the budget binds). With `factors_on="cpu"` see `host_fit_schedule`.

    Timeline on rank r: covariance group g holds the owned Â, Ŝ of earlier groups plus every point's sums
    of g; after the eigendecompositions it holds its owned factors; correction group g adds the bases of
    g's points it does not own, g's bases cast to dtype, and g's Λ̂ sums (owners keep theirs)."""
    if factors_on == "cpu":
        return host_fit_schedule(points, world, dtype, corrected, budget, fixed)
    sizes = [fit_sizes(p, dtype, corrected) for p in points]
    owned_bytes = _owned_factor_bytes(points, sizes, world)
    worst_owned = max(owned_bytes, default=0)
    cap = _capacity(budget, fixed, worst_owned)
    cov = partition([Item(k, sizes[k]["sums"]) for k in range(len(points))], cap, "fit (covariance sums)", ADVICE)
    corr = partition([Item(k, sizes[k]["Q"] + sizes[k]["cast"] + sizes[k]["Lambda"]) for k in range(len(points))],
                     cap, "fit (eigenvalue correction)", ADVICE) if corrected else []
    peaks = []
    for r in range(world):
        mine = set(owned(points, world, r))
        peak, kept = 0, 0
        for g in cov:
            peak = max(peak, kept + sum(sizes[i.key]["sums"] for i in g))
            kept += sum(sizes[i.key]["AS"] for i in g if i.key in mine)
        kept = sum(sizes[k]["AS"] + sizes[k]["Q"] + sizes[k]["L"] for k in mine)
        peak = max(peak, kept)
        for g in corr:
            peak = max(peak, kept + sum(sizes[i.key]["cast"] + sizes[i.key]["Lambda"]
                                        + (0 if i.key in mine else sizes[i.key]["Q"]) for i in g))
            kept += sum(sizes[i.key]["Lambda"] for i in g if i.key in mine)
        peaks.append(peak)
    return {"covariance_groups": _names(cov), "correction_groups": _names(corr), "peak_bytes": peaks,
            "dims": [(p.P, p.M) for p in points], "owned_bytes": owned_bytes}


def _owned_factor_bytes(points: list[Point], sizes: list[dict[str, int]], world: int) -> list[int]:
    """Per rank, the bytes of the finished factors it owns (Â, Ŝ, eigenbases, eigenvalues, Λ̂)."""
    full = [s["AS"] + s["Q"] + s["L"] + s["Lambda"] for s in sizes]
    return [sum(full[k] for k in owned(points, world, r)) for r in range(world)]


def host_fit_schedule(points: list[Point], world: int, dtype: str, corrected: bool, budget: int | None = None,
                      fixed: int = 0) -> dict:
    """`fit --factors-on cpu`: the running sums, the owned Â, Ŝ, eigenbases, eigenvalues and Λ̂ live in host
    memory (`host_peak_bytes`: the same tensors the device schedule keeps, less the correction's bases). The
    device holds, one tap point at a time, a batch's contribution to its sums (covariance: Â and Ŝ's size;
    correction: Λ̂'s) and one factor's eigendecomposition (the float64 matrix, its symmetrised copy and Q:
    3 × the larger side² × 8 B), plus a correction group's bases and their casts, partitioned by the budget.
    Nothing partitions the covariance pass: one pass over the fitting set."""
    sizes = [fit_sizes(p, dtype, corrected) for p in points]
    b = DTYPE_BYTES[dtype]
    contribution = max((s["sums"] for s in sizes), default=0)
    eigen = [3 * max(p.M, p.P) ** 2 * F64 for p in points]
    lam = max((p.P * p.M * b for p in points), default=0) if corrected else 0
    cap = _capacity(budget, fixed, lam)
    partition([Item(k, max(sizes[k]["sums"], eigen[k])) for k in range(len(points))], _capacity(budget, fixed, 0),
              "fit (one tap point's sums or eigendecomposition on the device)", ADVICE)
    corr = partition([Item(k, sizes[k]["Q"] + sizes[k]["cast"]) for k in range(len(points))], cap,
                     "fit (eigenvalue correction bases)", ADVICE) if corrected else []
    bases = [sum(sizes[i.key]["Q"] + sizes[i.key]["cast"] for i in g) for g in corr]
    device = max([contribution, max(eigen, default=0)] + [lam + group for group in bases])
    host = []
    for r in range(world):
        mine = set(owned(points, world, r))
        kept = sum(sizes[k]["AS"] + sizes[k]["Q"] + sizes[k]["L"] for k in mine)
        peak = max(sum(s["sums"] for s in sizes), kept)
        for g in corr:
            peak = max(peak, kept + sum(sizes[i.key]["Lambda"] for i in g))
            kept += sum(sizes[i.key]["Lambda"] for i in g if i.key in mine)
        host.append(peak)
    return {"covariance_groups": [list(range(len(points)))] if points else [], "correction_groups": _names(corr),
            "peak_bytes": [device] * world, "host_peak_bytes": host, "dims": [(p.P, p.M) for p in points],
            "owned_bytes": _owned_factor_bytes(points, sizes, world)}


# ---- queries ---------------------------------------------------------------------------------------
def query_factor_bytes(p: Point, fit_dtype: str, corrected: bool) -> int:
    """What the queries stage loads of an owned point: eigenbases, eigenvalues, Λ̂."""
    s = fit_sizes(p, fit_dtype, corrected)
    return s["Q"] + s["L"] + s["Lambda"]


def ihvp_bytes(p: Point, batches: int, ihvp_rank: int | None, dtype_bytes: int) -> int:
    """One point's IHVPs for every query batch: K × P × M, or K rank-r factors (P + M) × r."""
    per = (p.P + p.M) * min(ihvp_rank, p.P, p.M) if ihvp_rank else p.P * p.M
    return batches * per * dtype_bytes


def queries_schedule(points: list[Point], world: int, batches: int, fit_dtype: str, corrected: bool,
                     ihvp_rank: int | None, budget: int | None = None, fixed: int = 0) -> dict:
    """The queries stage's partitions of the query-gradient sums V_B (float64, every rank holds a group's,
    then reduces each to its owner) and each rank's predicted peak: owned factors + owned IHVPs of earlier
    groups + this group's sums."""
    v = [batches * p.P * p.M * F64 for p in points]
    out = [ihvp_bytes(p, batches, ihvp_rank, F64) for p in points]
    fac = [query_factor_bytes(p, fit_dtype, corrected) for p in points]
    owned_bytes = [sum(fac[k] + out[k] for k in owned(points, world, r)) for r in range(world)]
    groups = partition([Item(k, v[k]) for k in range(len(points))], _capacity(budget, fixed, max(owned_bytes, default=0)),
                       "queries (query-gradient sums)", ADVICE)
    peaks = []
    for r in range(world):
        mine = set(owned(points, world, r))
        kept = sum(fac[k] for k in mine)
        peak = kept
        for g in groups:
            peak = max(peak, kept + sum(v[i.key] for i in g))
            kept += sum(out[i.key] for i in g if i.key in mine)
        peaks.append(max(peak, kept))
    return {"groups": _names(groups), "peak_bytes": peaks, "owned_bytes": owned_bytes,
            "ihvp_bytes_total": sum(out), "owned_ihvp_bytes": [sum(out[k] for k in owned(points, world, r))
                                                              for r in range(world)]}


# ---- score -----------------------------------------------------------------------------------------
def score_schedule(points: list[Point], batches: int, ihvp_rank: int | None, dtype: str,
                   budget: int | None = None, fixed: int = 0, world: int = 1, sharded: bool = False) -> dict:
    """Scoring's partitions of the (point, batch) IHVPs, in the scoring dtype: each pass over the candidates
    holds one partition, the same on every rank. Replicated, every rank holds the whole partition; sharded,
    a rank holds the units of the points it owns plus, while a hook runs, one other point's unit (broadcast
    by its owner). Returns the partitions and each rank's predicted peak."""
    b = DTYPE_BYTES[dtype]
    units = [Item((k, q), ihvp_bytes(p, 1, ihvp_rank, b)) for k, p in enumerate(points) for q in range(batches)]
    cap = _capacity(budget, fixed, 0)

    def peaks(group: list[Item]) -> list[int]:
        if not sharded:
            return [sum(i.bytes for i in group)] * world
        return [sum(i.bytes for i in group if dist_utils.owner(i.key[0], world) == r)
                + max((i.bytes for i in group if dist_utils.owner(i.key[0], world) != r), default=0)
                for r in range(world)]

    if sharded and cap is not None:
        groups: list[list[Item]] = []
        for item in units:
            if groups and max(peaks(groups[-1] + [item])) <= cap:
                groups[-1].append(item)
            elif max(peaks([item])) <= cap:
                groups.append([item])
            else:
                partition([item], cap, "score (IHVPs)", ADVICE)  # raises, saying what to change
    else:
        groups = partition(units, cap, "score (IHVPs)", ADVICE)
    per_rank = [max((peaks(g)[r] for g in groups), default=0) for r in range(world)]
    return {"partitions": _names(groups), "peak_bytes": per_rank, "ihvp_bytes_total": sum(i.bytes for i in units)}


# ---- what every stage holds beside its own tensors --------------------------------------------------
def activation_bytes(hidden: int, layers: int, heads: int, vocab: int, micro_batch: int, seq: int,
                     param_bytes: int) -> int:
    """An estimate of one micro-batch's forward + backward activations without recomputation
    (Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) per layer at 2 bytes, scaled to the model's dtype)
    plus float32 logits and their gradient."""
    per_layer = seq * micro_batch * hidden * (34 + 5 * heads * seq / hidden) * param_bytes / 2
    return int(layers * per_layer + 2 * micro_batch * seq * vocab * 4)


def loss_scale_bytes(points: list[Point], micro_batch: int, seq: int, param_bytes: int) -> int:
    """What the fp16 loss scale (`pass_scale.PassScale`, dynamic) adds while a tap point's hook runs, one point at a
    time: its input a copied with zeros where a redone try counted it (weights' dtype), and its output gradient
    g unscaled to float32 (g / s) then copied with zeros likewise: B·T·(M·param_bytes + 2·P·4) at the largest."""
    return max((micro_batch * seq * (p.M * param_bytes + 2 * p.P * 4) for p in points), default=0)


def gradient_bytes(points: list[Point], micro_batch: int, dtype_bytes: int) -> int:
    """The largest per-micro-batch modular gradients G (B × P × M) a hook forms (queries, score)."""
    return max((micro_batch * p.P * p.M * dtype_bytes for p in points), default=0)


@dataclass(frozen=True)
class ModelFacts:
    """What the capacity model needs of a causal LM, read from its config and module tree."""

    hidden: int
    layers: int
    heads: int
    vocab: int
    params: int
    param_bytes: int

    def shard_bytes(self, world: int, zero3: bool) -> int:
        """The weights one rank holds between gathers (ZeRO-3 partitions them over the ranks)."""
        return self.params * self.param_bytes // (world if zero3 else 1)


def fixed_parts(facts: ModelFacts, world: int, zero3: bool, micro_batch: int, seq: int,
                points: list[Point] | None = None, gradient_dtype_bytes: int | None = None,
                loss_scaled: bool = False) -> dict[str, int]:
    """What a stage holds beside its own tensors: the weights shard, one micro-batch's activations,
    for the stages that form them (queries, score) the largest per-micro-batch modular gradients and, under
    an fp16 model's loss scale (`loss_scaled`), the copies its gate makes (`loss_scale_bytes`)."""
    parts = {"weights_shard": facts.shard_bytes(world, zero3),
             "activations": activation_bytes(facts.hidden, facts.layers, facts.heads, facts.vocab, micro_batch, seq,
                                             facts.param_bytes)}
    if gradient_dtype_bytes is not None:
        parts["modular_gradients"] = gradient_bytes(points, micro_batch, gradient_dtype_bytes)
    if loss_scaled:
        parts["loss_scale_copies"] = loss_scale_bytes(points, micro_batch, seq, facts.param_bytes)
    return parts


def stage_fixed_bytes(module, points: list[Point], ds_config: dict, micro_batch: int, seq: int,
                      gradient_dtype_bytes: int | None = None) -> int:
    """`fixed_parts` of a loaded model on this world size, summed (what a stage's budget must leave)."""
    return sum(fixed_parts(model_facts(module), dist_utils.world_size(), zero_stage(ds_config) == 3, micro_batch,
                           seq, points, gradient_dtype_bytes, loss_scaled=scales(module)).values())


def _config_value(config, what: str, *names: str) -> int:
    for name in names:
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    name = str(getattr(config, "_name_or_path", "") or "")
    where = name if name.endswith(".json") else f"{name}/config.json" if name else "the model's config.json"
    kind = getattr(config, "model_type", "") or "no model_type"
    raise ConfigError(f"{where} ({kind}): none of {', '.join(names)} is set, and the memory planner "
                      f"needs the model's {what}. Add it to config.json under one of those names, or use a model "
                      "whose config names it.")


def model_facts(model) -> ModelFacts:
    """Facts of a loaded (possibly ZeRO-3-partitioned) or `meta`-device model."""
    c = model.config
    params = list(model.parameters())
    count = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    return ModelFacts(hidden=_config_value(c, "hidden width", "hidden_size", "n_embd", "d_model"),
                      layers=_config_value(c, "number of layers", "num_hidden_layers", "n_layer", "num_layers"),
                      heads=_config_value(c, "number of attention heads", "num_attention_heads", "n_head"),
                      vocab=_config_value(c, "vocabulary size", "vocab_size"), params=count,
                      param_bytes=params[0].element_size() if params else 4)


def points_of(model, taps) -> list[Point]:
    """The capacity model's view of tap points (anything with name, input_module, output_module)."""
    return [Point(t.name, *point_dims(model, t)) for t in taps]
