"""The scale suite (issue 15; DESIGN.md section 4): fit → queries → recall (score-all) → score of a
random-weight Llama (`scale_layers` deep) at one or more widths, on 1, 2 and 4 ranks with the IHVPs
replicated while scoring, on 2 and 4 ranks with them sharded, and once more on 2 ranks (sharded) under
per-stage budgets that force several partitions. Per run it reads the per-rank peaks each stage measured of its own
tensors (`memory.Peak`: factor sums and factors in fit, owned factors, query-gradient sums and owned IHVPs
in queries, the IHVPs resident in score) beside what `lancet-ds plan` predicts from the config alone,
and checks that the scores do not depend on the world size or the partitions.

These peaks are the stage's own tensors. On a GPU each stage also reads the CUDA allocator's peak (the
weights shard, activations and modular gradients included), the most over ranks, beside the plan's per-rank
total: the check that the plan's fixed parts hold on real hardware. On the CPU accelerator there is no
allocator to read and those figures are absent.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from lancet_ds.fileio import read_jsonl, write_jsonl

STAGES = ("fit", "queries", "score")
MAX_LENGTH, MICRO_BATCH = 128, 4


def prepare(work: Path, width: int, layers: int, n_corpus: int, n_queries: int) -> dict:
    """A tokenizer-equipped random Llama of `width` (MLP 4×), a corpus and queries, written once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lancet_ds.demo_world.corpus import generate_texts
    from lancet_ds.demo_world.tokenizer import train_tokenizer

    out = work / f"w{width}-l{layers}"
    files = {"model": str(out / "model"), "corpus": str(out / "train.jsonl"), "queries": str(out / "queries.jsonl")}
    if (out / "model" / "config.json").exists():
        return files
    texts = generate_texts(seed=3, n_train=n_corpus, contamination=0.1, n_judge=10)
    tok = train_tokenizer((t for r in texts.train for t in (r["prompt"], r["response"])), vocab_size=320)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out / "model"))
    tok.save_pretrained(str(out / "model"))
    write_jsonl(out / "train.jsonl", texts.train)
    write_jsonl(out / "queries.jsonl", [{"id": f"q{i}", **r} for i, r in enumerate(texts.train[:n_queries])])
    return files


@contextlib.contextmanager
def allocator_peak(into: dict):
    """On CUDA, `into` receives the allocator's peak during the block and what was allocated before it, each the
    most over ranks (`allocator_peak_bytes`, `allocator_base_bytes`); elsewhere nothing."""
    import torch

    from lancet_ds import distributed as dist_utils

    if dist_utils.device().type != "cuda":
        yield
        return
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    yield
    torch.cuda.synchronize()
    both = dist_utils.all_reduce_max(torch.tensor([torch.cuda.max_memory_allocated(), base], device=dist_utils.device()))
    into["allocator_peak_bytes"], into["allocator_base_bytes"] = (int(v) for v in both.tolist())


def run_stages(spec: dict) -> dict:
    """Worker body (every rank): fit, queries and recall once, then score once per placement of
    `spec["placements"]` (the later ones in sibling run directories `RUN-<placement>` that share the first's
    factors, IHVPs and candidates); per placement, the measured and predicted peaks of the four stages."""
    from lancet_ds.bench.shared_runs import link_parts
    from lancet_ds.data.spec import DataSpec
    from lancet_ds.influence.fit import FitArgs, fit_factors
    from lancet_ds.influence.queries import QueriesArgs, run_queries
    from lancet_ds.influence.score import ScoreArgs, run_scores
    from lancet_ds.recall.stage import RecallArgs, run_recall
    from lancet_ds.run_dir import RunDir

    run, budgets = RunDir.of(spec["run"]), spec.get("budgets") or {}
    corpus, queries = DataSpec(spec["corpus"]), DataSpec(spec["queries"])
    common = {"max_length": MAX_LENGTH, "micro_batch": MICRO_BATCH}
    cuda: dict[str, dict] = {stage: {} for stage in ("fit", "queries")}
    with allocator_peak(cuda["fit"]):
        fit = fit_factors(run, corpus, FitArgs(fit_responses="corpus", num_samples=spec["fit_samples"],
                                               memory_budget=budgets.get("fit"), **common), spec["model"], spec["ds_config"])
    with allocator_peak(cuda["queries"]):
        batches = run_queries(run, queries, QueriesArgs(batches=str(spec["batches"]), memory_budget=budgets.get("queries"),
                                                        **common), spec["model"], spec["ds_config"])
    run_recall(run, corpus, queries, RecallArgs(score_all=True))
    out = {}
    for i, placement in enumerate(spec["placements"]):
        scored = run if i == 0 else RunDir.of(f"{spec['run']}-{placement}")
        if i:
            link_parts(run, scored, ("factors", "queries", "recall"))
        score_cuda: dict = {}
        with allocator_peak(score_cuda):
            scores = run_scores(scored, corpus, ScoreArgs(memory_budget=budgets.get("score"), ihvp_placement=placement,
                                                          **common), spec["model"], spec["ds_config"])
        out[placement] = {"fit": {**fit["memory"], **cuda["fit"]}, "queries": {**batches["memory"], **cuda["queries"]},
                          "score": {**scores["memory"], **score_cuda}}
    return out


@functools.cache
def _meta(model: str):
    """The model on the meta device, built once per path (the plans below reuse it)."""
    from lancet_ds.plan import meta_model

    return meta_model(model)


def _plan(model: str, world: int, spec: dict, budget: int | None = None) -> dict:
    from lancet_ds.modeling import load_ds_config
    from lancet_ds.plan import PlanInputs, engine_inputs, make_plan

    return make_plan(_meta(model), PlanInputs(
        world_size=world, memory_budget=budget, queries=spec["n_queries"], batches=str(spec["batches"]),
        ihvp_placement=spec["placement"], num_samples=spec["fit_samples"], max_length=MAX_LENGTH,
        micro_batch=MICRO_BATCH, **engine_inputs(load_ds_config(spec["ds_config"]))))


def predicted(model: str, world: int, spec: dict) -> dict:
    """`lancet-ds plan`'s per-rank stage tensors for the same run (worst rank), each stage under its budget."""
    budgets = spec.get("budgets") or {}
    out = {}
    for stage in STAGES:
        s = next(x for x in _plan(model, world, spec, budgets.get(stage))["stages"] if x["stage"] == stage)
        out[stage] = {"bytes": s["per_rank_bytes"]["stage_tensors"], "partitions": s["partitions"],
                      "total_bytes": s["per_rank_bytes"]["total"]}
    return out


def partition_budgets(model: str, world: int, spec: dict) -> dict[str, int]:
    """Per-stage budgets that force several partitions: fit and queries one tap point per partition, score
    half the IHVPs per pass."""
    from lancet_ds.influence import capacity
    from lancet_ds.influence.fit import tap_points
    from lancet_ds.influence.sublayers import discover

    m = _meta(model)
    shapes = capacity.points_of(m, tap_points(discover(m), "linfac"))
    plan = {s["stage"]: s for s in _plan(model, world, spec)["stages"]}
    fixed = {k: plan[k]["per_rank_bytes"]["total"] - plan[k]["per_rank_bytes"]["stage_tensors"] for k in STAGES}
    biggest = max(capacity.fit_sizes(p, "float32", False)["sums"] for p in shapes)
    v_item = max(spec["batches"] * p.P * p.M * 8 for p in shapes)
    return {"fit": fixed["fit"] + plan["fit"]["owned_factor_bytes"] + biggest,
            "queries": fixed["queries"] + plan["queries"]["owned_bytes"] + v_item,
            "score": fixed["score"] + plan["score"]["per_rank_bytes"]["stage_tensors"] // 2 + 1}


def max_rel_diff(a: Path, b: Path) -> float:
    """The largest |Δ score| over candidates, relative to the largest |score| of `a`."""
    ra = {r["id"]: r["score"] for r in read_jsonl(a)}
    rb = {r["id"]: r["score"] for r in read_jsonl(b)}
    assert ra.keys() == rb.keys(), "the runs scored different candidates"
    top = max(abs(v) for v in ra.values()) or 1.0
    return max(abs(ra[k] - rb[k]) for k in ra) / top


def figures(runs: dict[str, dict], widths: list[int], ranks: list[int]) -> dict:
    """bench.json `scale`: per-rank bytes per world size (widest model) — the factors a rank owns after the
    fit, the fit's peak (with every point's running sums during the pass), the IHVPs a rank owns and those
    resident while scoring (replicated and sharded placement) — their ratios, the plan's worst relative error over every measured peak, and the
    scores' agreement across ranks and partitions."""
    wide = max(widths)
    out: dict = {"widths": widths, "ranks": ranks, "runs": runs}
    for w in ranks:
        r = runs[f"w{wide}-{w}r"]
        out[f"factor_bytes_per_rank_{w}r"] = max(r["measured"]["fit"]["owned_bytes_per_rank"])
        out[f"fit_peak_bytes_per_rank_{w}r"] = max(r["measured"]["fit"]["peak_bytes_per_rank"])
        out[f"query_ihvp_bytes_per_rank_{w}r"] = max(r["measured"]["queries"]["owned_ihvp_bytes_per_rank"])
        out[f"ihvp_bytes_per_rank_{w}r"] = max(r["measured"]["score"]["peak_bytes_per_rank"])
        sharded = runs.get(f"w{wide}-{w}r-sharded", r)  # on 1 rank the two placements are one
        out[f"sharded_ihvp_bytes_per_rank_{w}r"] = max(sharded["measured"]["score"]["peak_bytes_per_rank"])
    for w in ranks[1:]:
        for key in ("factor_bytes_per_rank", "fit_peak_bytes_per_rank", "query_ihvp_bytes_per_rank",
                    "ihvp_bytes_per_rank", "sharded_ihvp_bytes_per_rank"):
            out[f"{key}_{w}r_over_1r"] = out[f"{key}_{w}r"] / out[f"{key}_1r"]
    errors = [abs(r["predicted"][s]["bytes"] - max(r["measured"][s]["peak_bytes_per_rank"]))
              / max(r["measured"][s]["peak_bytes_per_rank"]) for r in runs.values() for s in STAGES]
    out["plan_rel_error_max"] = max(errors)
    allocator = {f"{name}.{s}": {"measured_bytes": r["measured"][s]["allocator_peak_bytes"]
                                 - r["measured"][s]["allocator_base_bytes"],
                                 "left_before_bytes": r["measured"][s]["allocator_base_bytes"],
                                 "planned_total_bytes": r["predicted"][s]["total_bytes"]}
                 for name, r in runs.items() for s in STAGES if "allocator_peak_bytes" in r["measured"][s]}
    if allocator:  # on a GPU: the allocator's peak (less what an earlier stage left) against the plan's whole figure
        for a in allocator.values():
            a["plan_rel_error"] = (a["planned_total_bytes"] - a["measured_bytes"]) / max(1, a["measured_bytes"])
        out["allocator"] = allocator
        out["plan_total_rel_error_max"] = max(abs(a["plan_rel_error"]) for a in allocator.values())
    out["scores_max_rel_diff"] = max(r.get("scores_rel_diff_vs_1r", 0.0) for r in runs.values())
    return out
