"""`lancet-ds plan`: the per-rank memory of each stage, the partitions it will run in and an estimated
time, from the model's config alone (DESIGN.md section 4), so a user can size a job for a model they have
not downloaded. The model is built on the `meta` device (no weights, no memory) and sized by the same
`influence.capacity` functions the stages schedule their work with; the job records its plan in
`manifest.json` and refuses, before any work, a job whose budget cannot hold a stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from lancet_ds.errors import ConfigError
from lancet_ds.influence import capacity
from lancet_ds.influence.fit import tap_points
from lancet_ds.influence.memory import DTYPE_BYTES, budget_problems, format_bytes, parse_bytes
from lancet_ds.influence.sublayers import discover
from lancet_ds.options import positive

ADAM_BYTES_PER_PARAM = 16  # fp32 master weights 4 + gradients 4 + Adam moments 8, partitioned by ZeRO-3


@dataclass
class PlanInputs:
    """What a plan needs besides the model: the job's scale and its stage options (the `lancet-ds plan`
    options, declared here once)."""

    world_size: int = 1
    """Ranks in all (GPUs over all nodes)."""
    nodes: int = 1
    """Nodes the ranks are spread over."""
    memory_budget: str | None = None
    """Per-rank memory, e.g. 80GB: fit, queries and score are split into partitions that fit it."""
    corpus_tokens: int | None = None
    """Tokens in the training corpus (for the score time)."""
    queries: int = 100
    """Influence queries."""
    k: int | None = None
    """Recall's top-k per query (candidates ≤ queries × k); default: every corpus sample is scored."""
    batches: str = "10"
    """Query batches (a number, or 'all' for one per query)."""
    method: Literal["linfac", "ekfac"] = "linfac"
    """Factor method."""
    eigen_correction: bool = False
    """LinFAC with the corrected diagonal Λ̂ (a second fit pass)."""
    fit_dtype: Literal["float32", "float64"] = "float32"
    """Accumulation dtype of the factor sums."""
    factors_on: Literal["device", "cpu"] = "device"
    """Where fit keeps its sums and owned factors (as `fit --factors-on`): cpu moves them to host memory."""
    score_dtype: Literal["float32", "float64"] = "float32"
    """Dtype of the IHVPs while scoring."""
    ihvp_placement: Literal["replicated", "sharded"] = "replicated"
    """Scoring: every rank holds every IHVP of a partition, or only its own points' (as `score --ihvp-placement`)."""
    ihvp_rank: int | None = None
    """Store IHVPs as rank-r factors."""
    num_samples: int = 1000
    """Fitting sequences."""
    max_length: int = 512
    """Tokens per sequence."""
    micro_batch: int = 8
    """Sequences per rank per pass."""
    attention: bool = False
    """Also treat attention blocks as sublayers."""
    sublayer_patterns: list[str] = field(default_factory=list)
    """Module-name patterns for architectures without default sublayers (as `fit --sublayer`)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage of the config (3 partitions the weights over the ranks)."""
    weights_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the engine keeps the weights and activations in: bfloat16 / float16 where the DeepSpeed config
    enables bf16 / fp16."""
    tokens_per_second: float | None = None
    """One rank's forward+backward tokens/s on this model (bench: speed.absolute); gives stage times."""

    def validate(self) -> list[str]:
        return positive(self, "world_size", "nodes", "queries", "num_samples", "max_length", "micro_batch") \
            + positive(self, "k", "ihvp_rank", "corpus_tokens", "tokens_per_second", allow_none=True) \
            + budget_problems(self.memory_budget)

    @property
    def zero3(self) -> bool:
        return self.zero_stage == 3


def meta_model(model: str | Path):
    """The causal LM of a model directory or a `config.json`, on the meta device (shapes only)."""
    import torch
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"{model}: no config.json. Give a Hugging Face model directory or its config.json.")
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a Hugging Face model config ({exc}).") from None
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(f"{path}: model type {config.model_type!r} is not a causal LM transformers knows.") from None
    # the class itself, not from_config: under a live ZeRO-3 HfDeepSpeedConfig (a job's later stages) from_config
    # builds inside deepspeed.zero.Init, whose collectives would run on rank 0 alone
    with torch.device("meta"):
        return model_class(config)


def _batches(inputs: PlanInputs) -> int:
    return inputs.queries if inputs.batches == "all" else min(int(inputs.batches), inputs.queries)


def _schedule(fn, *args, budget: int | None, fixed: int, **kw) -> tuple[dict, str | None]:
    """A stage's schedule under the budget, or (unbudgeted, why it cannot fit) when one unit cannot."""
    try:
        return fn(*args, budget, fixed, **kw), None
    except ConfigError as exc:
        return fn(*args, None, fixed, **kw), str(exc)


def _stage(name: str, fixed: dict[str, int], tensors: int, partitions: int, budget: int | None, tokens: float | None,
           inputs: PlanInputs, extra: dict | None = None) -> dict:
    total = sum(fixed.values()) + tensors
    seconds = None
    if inputs.tokens_per_second and tokens is not None:
        seconds = tokens / (inputs.tokens_per_second * inputs.world_size)
    return {"stage": name, "per_rank_bytes": {**fixed, "stage_tensors": tensors, "total": total},
            "partitions": partitions, "seconds": seconds, **(extra or {}),
            "fits": budget is None or name == "correct" or (total <= budget and not (extra or {}).get("refused"))}


def make_plan(model, inputs: PlanInputs) -> dict:
    """The plan of fit, queries, score and correct on `inputs.world_size` ranks (per rank, worst rank). The
    budget binds fit, queries and score; correct's figures (a ZeRO-3 policy with Adam, the reference on
    the CPU) are for information: its memory is the DeepSpeed config's (offload, micro-batch)."""
    budget = parse_bytes(inputs.memory_budget)
    w = inputs.world_size
    facts = replace(capacity.model_facts(model), param_bytes=DTYPE_BYTES[inputs.weights_dtype])
    points = tap_points(discover(model, inputs.sublayer_patterns or None, inputs.attention), inputs.method)
    shapes = capacity.points_of(model, points)
    corrected = inputs.method == "ekfac" or inputs.eigen_correction
    k = _batches(inputs)
    fixed = lambda grad_bytes=None: capacity.fixed_parts(facts, w, inputs.zero3, inputs.micro_batch,  # noqa: E731
                                                         inputs.max_length, shapes, grad_bytes,
                                                         loss_scaled=inputs.weights_dtype == "float16")
    base, grads64, grads_s = fixed(), fixed(8), fixed(DTYPE_BYTES[inputs.score_dtype])
    fit, fit_err = _schedule(capacity.fit_schedule, shapes, w, inputs.fit_dtype, corrected, budget=budget,
                             fixed=sum(base.values()), factors_on=inputs.factors_on)
    queries, q_err = _schedule(capacity.queries_schedule, shapes, w, k, inputs.fit_dtype, corrected, inputs.ihvp_rank,
                               budget=budget, fixed=sum(grads64.values()))
    score, s_err = _schedule(capacity.score_schedule, shapes, k, inputs.ihvp_rank, inputs.score_dtype, budget=budget,
                             fixed=sum(grads_s.values()), world=w, sharded=inputs.ihvp_placement == "sharded")
    fit_passes = len(fit["covariance_groups"]) + len(fit["correction_groups"])
    candidates = None if inputs.corpus_tokens is None else (
        inputs.corpus_tokens if inputs.k is None else min(inputs.corpus_tokens, inputs.queries * inputs.k * inputs.max_length))
    stages = [
        _stage("fit", base, max(fit["peak_bytes"]), fit_passes, budget,
               inputs.num_samples * inputs.max_length * fit_passes, inputs,
               {"owned_factor_bytes": max(fit["owned_bytes"]), "refused": fit_err,
                **({"host_factor_bytes": max(fit["host_peak_bytes"])} if "host_peak_bytes" in fit else {})}),
        _stage("queries", grads64, max(queries["peak_bytes"]), len(queries["groups"]), budget,
               inputs.queries * inputs.max_length * len(queries["groups"]), inputs,
               {"owned_ihvp_bytes": max(queries["owned_ihvp_bytes"]), "owned_bytes": max(queries["owned_bytes"]), "ihvp_bytes_total": queries["ihvp_bytes_total"],
                "refused": q_err}),
        _stage("score", grads_s, max(score["peak_bytes"]), len(score["partitions"]), budget,
               None if candidates is None else candidates * len(score["partitions"]), inputs, {"refused": s_err}),
        _stage("correct", {"policy_shard_with_adam": facts.params * ADAM_BYTES_PER_PARAM // (w if inputs.zero3 else 1),
                           "activations": 2 * base["activations"]}, 0, 1, budget, None, inputs,
               {"reference_on_cpu_bytes": facts.shard_bytes(w, inputs.zero3)}),
    ]
    return {"model": {"params": facts.params, "hidden": facts.hidden, "layers": facts.layers,
                      "tap_points": len(points), "method": inputs.method},
            "world_size": w, "nodes": inputs.nodes, "memory_budget_bytes": budget, "query_batches": k,
            "ihvp_rank": inputs.ihvp_rank, "stages": stages, "fits": all(s["fits"] for s in stages)}


def enforce(plan: dict) -> None:
    """Refuse (exit 4, saying what to change) a plan in which fit, queries or score exceeds the budget."""
    over = [s for s in plan["stages"] if not s["fits"]]
    if over:
        parts = "; ".join(s.get("refused") or f"{s['stage']} needs {format_bytes(s['per_rank_bytes']['total'])}"
                          for s in over)
        raise ConfigError(
            f"the plan does not fit the memory budget of {format_bytes(plan['memory_budget_bytes'])} per rank "
            f"({parts}). Raise memory_budget, add ranks (weights, factors and IHVPs fall as 1/ranks), lower "
            "micro_batch or max_length, or set stages.queries.ihvp_rank or stages.score.ihvp_placement=sharded. "
            "`lancet-ds plan` shows every figure.")


def plan_lines(plan: dict) -> list[str]:
    """The plan as text, one line per stage."""
    m = plan["model"]
    lines = [f"model: {m['params'] / 1e9:.2f}B parameters, hidden {m['hidden']}, {m['layers']} layers, "
             f"{m['tap_points']} {m['method']} tap points; {plan['world_size']} rank(s) on {plan['nodes']} node(s), "
             f"{plan['query_batches']} query batches; budget "
             + (format_bytes(plan["memory_budget_bytes"]) if plan["memory_budget_bytes"] else "none") + " per rank"]
    for s in plan["stages"]:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in s["per_rank_bytes"].items() if k != "total")
        time = f", ~{s['seconds'] / 3600:.2f} h" if s["seconds"] is not None else ""
        host = f"; host memory {format_bytes(s['host_factor_bytes'])} for the factors" if "host_factor_bytes" in s else ""
        lines.append(f"{s['stage']:>8}: {format_bytes(s['per_rank_bytes']['total'])} per rank ({parts}){host}; "
                     f"{s['partitions']} partition(s){time}{'' if s['fits'] else '  [DOES NOT FIT]'}")
    return lines


def dump(plan: dict) -> str:
    return json.dumps(plan, indent=2)


def engine_inputs(ds_config: dict) -> dict:
    """The plan inputs a DeepSpeed config fixes: its ZeRO stage and the dtype of the weights."""
    from lancet_ds.checkpoint_io import model_dtype
    from lancet_ds.modeling import zero_stage

    return {"zero_stage": zero_stage(ds_config), "weights_dtype": str(model_dtype(ds_config)).removeprefix("torch.")}


def job_plan(spec, world_size: int) -> dict:
    """The plan of a job (`job.spec.JobSpec`) on `world_size` ranks, from its model's config and its options."""
    from lancet_ds.data.bad_records import RejectSink
    from lancet_ds.modeling import load_ds_config

    fit, queries, score = spec.stages["fit"], spec.stages["queries"], spec.stages["score"]
    n_queries = sum(1 for _ in spec.queries.samples(RejectSink("skip")))
    return make_plan(meta_model(spec.model), PlanInputs(
        world_size=world_size, memory_budget=spec.memory_budget or fit.memory_budget, queries=n_queries,
        k=spec.stages["recall"].top_k, batches=queries.batches, method=fit.method, eigen_correction=fit.eigen_correction,
        fit_dtype=fit.dtype, factors_on=fit.factors_on, score_dtype=score.dtype, ihvp_placement=score.ihvp_placement,
        ihvp_rank=queries.ihvp_rank, num_samples=fit.num_samples,
        max_length=fit.max_length, micro_batch=max(fit.micro_batch, queries.micro_batch, score.micro_batch),
        attention=fit.attention, sublayer_patterns=list(fit.sublayer_patterns),
        **engine_inputs(load_ds_config(spec.ds_config))))
