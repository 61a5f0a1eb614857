"""Plain forward+backward against our influence pipelines on the same model and batches, in one process.

* Baseline: a ZeRO-3 training engine, `engine(...)` + `engine.backward(L)` over every micro-batch (what a
  training step costs, weight gradients included), over the fitting set, the queries and the candidates.
* Ours, per method (LinFAC per MLP sublayer, EK-FAC per Linear inside it), on a ZeRO-3 inference engine:
  the covariance pass (`compute_factors`, with EK-FAC's eigenvalue-correction pass), the
  eigendecompositions, the query pass and IHVPs (single-query mode: one query per batch, the shape of
  kronfluence's pairwise scores), and the scoring pass — the stage code, without the file I/O.
* Bytes: the stored factors and one query batch's IHVP per method, with the paper's Appendix B
  prediction Σ (M² + P² + M·P) over the tap points (a tap point maps R^M to R^P).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.data.encoding import collate, padding_sample
from lancet_ds.influence.covariance import BatchContext
from lancet_ds.influence.fit import FitArgs, compute_factors, tap_points
from lancet_ds.influence.gradients import InfluenceScores, QueryGradientSums
from lancet_ds.influence.ihvp import ihvp
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence.sublayers import discover
from lancet_ds.losses import response_nll_sum
from lancet_ds.modeling import load_ds_config, load_model, local_and_full_numel, make_engine, make_inference_engine, releases_engines

from lancet_ds.bench.synthetic import PAD_ID


def tokens(samples) -> int:
    return sum(len(s.input_ids) for s in samples)


def fwd_bwd_seconds(engine, samples, micro: int) -> float:
    """Wall time of forward + backward (training engine, weight gradients) over `samples`."""
    world, rank, device = dist_utils.world_size(), dist_utils.rank(), dist_utils.device()
    t0 = time.perf_counter()
    for p in range(dist_utils.num_passes(len(samples), micro, world)):
        idx = dist_utils.pass_indices(p, micro, rank, world)
        batch = collate([samples[i] if i < len(samples) else padding_sample(PAD_ID) for i in idx], PAD_ID)
        out = engine(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        engine.backward(response_nll_sum(out.logits, batch["labels"].to(device)))
    return time.perf_counter() - t0


@releases_engines
def baseline(model_dir: str, ds_config: str, sets: dict[str, list], micro: int) -> dict:
    """Forward+backward seconds per set on one training engine, and this rank's parameter elements."""
    cfg = load_ds_config(ds_config, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1)
    engine = make_engine(load_model(model_dir, cfg), cfg)
    fwd_bwd_seconds(engine, sets["fit"][:micro], micro)  # warm-up: first-call allocations
    out = {name: fwd_bwd_seconds(engine, s, micro) for name, s in sets.items()}
    local, full = local_and_full_numel(engine.module)
    return {"seconds": out, "param_elements_local": local, "param_elements_full": full}


def _collect_scores(scores: InfluenceScores, ctx: BatchContext, rows: dict):
    def after(_passes_done: int) -> None:
        for b, i in enumerate(ctx.indices):
            if i is not None:
                rows[i] = scores.current[b].cpu()
        scores.reset()
    return after


def pipeline(module, method: str, sets: dict[str, list], micro: int, work: Path) -> dict:
    """Our pipeline end to end on `module` (an inference engine's module); times, bytes and scores."""
    points = tap_points(discover(module), method)
    names = [p.name for p in points]
    args = FitArgs(method=method, micro_batch=micro, checkpoint_every=10**9)
    t0 = time.perf_counter()
    factors, timings = compute_factors(module, sets["fit"], points, args, PAD_ID, work / f"partial-{method}", "bench")
    fit_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    ctx = BatchContext()
    queries = sets["queries"]
    sums = QueryGradientSums(ctx, torch.float64, list(range(len(queries))), len(queries))
    run_passes(module, queries, points, sums, ctx, torch.float64, micro, PAD_ID, "empirical", 0)
    ihvps = {n: ihvp(dist_utils.all_reduce_sum(sums.sums[n]["V"]), factors[n]) for n in names}
    query_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    scores, rows = InfluenceScores(ctx, torch.float64, ihvps), {}
    run_passes(module, sets["candidates"], points, scores, ctx, torch.float64, micro, PAD_ID, "empirical", 0,
               after_pass=_collect_scores(scores, ctx, rows))
    score_seconds = time.perf_counter() - t0

    stored = ("A", "S", "QA", "LA", "QS", "LS", "Lambda")
    factor_bytes = sum(t.numel() * t.element_size() for f in factors.values() for k, t in f.items() if k in stored)
    dims = [(f["A"].shape[0], f["S"].shape[0]) for f in factors.values()]
    return {
        "tap_points": len(points),
        "covariance_pass_seconds": timings["covariance_pass_seconds"],
        "eigendecomposition_seconds": timings["eigendecomposition_seconds"],
        "correction_pass_seconds": timings["correction_pass_seconds"],
        "fit_seconds": fit_seconds, "query_ihvp_seconds": query_seconds, "score_seconds": score_seconds,
        "total_seconds": fit_seconds + query_seconds + score_seconds,
        "factor_bytes": factor_bytes,
        "ihvp_bytes_per_query_batch": sum(m * p * 8 for m, p in dims),
        "paper_overhead_elements": sum(m * m + p * p + m * p for m, p in dims),
        "scores": torch.stack([rows[i] for i in sorted(rows)]),
    }


@releases_engines
def ours(model_dir: str, ds_config: str, sets: dict[str, list], micro: int, work: Path) -> dict:
    """LinFAC and EK-FAC pipelines on one ZeRO-3 inference engine."""
    cfg = load_ds_config(ds_config, train_micro_batch_size_per_gpu=micro)
    engine = make_inference_engine(load_model(model_dir, cfg), cfg)
    out = {m: pipeline(engine.module, m, sets, micro, work) for m in ("linfac", "ekfac")}
    return out
