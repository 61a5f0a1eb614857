"""`lancet-ds queries`: influence queries → modular gradients on the sharded model → k-means batches
→ per-batch IHVPs, stored as safetensors under `RUN_DIR/queries/` (DESIGN.md section 3, Eq. 12–13).

Outputs: `queries-RRRRR-of-WWWWW.safetensors` shards (tensor `<sublayer>.ihvp.<batch>` of shape P×M, or
with `ihvp_rank` the factors `<sublayer>.ihvp.<batch>.U` (P×r, singular values folded in) and `.V`
(M×r)), `index.json` like the factors', `batches.json` (batch → query ids, the damping used per
sublayer and the damping rule's factor, and the low-rank approximation error when truncated) and `query_set.jsonl`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import nothing_usable, stage_sink
from lancet_ds.data.corpus import load_encoded
from lancet_ds.data.records import EncodedSample
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import BadInputError, ConfigError
from lancet_ds.fileio import read_json, write_json, write_jsonl
from lancet_ds.influence.covariance import BatchContext
from lancet_ds.influence.eigen import curvature_diagonal, default_damping
from lancet_ds.influence import capacity
from lancet_ds.influence.factor_store import FACTOR_KEYS, load_factors, save_shard, shard_name, write_index
from lancet_ds.influence.memory import Peak, budget_problems, parse_bytes, tensor_bytes
from lancet_ds.fingerprint import json_fingerprint, model_fingerprint
from lancet_ds.influence.gradients import QueryGradientSums
from lancet_ds.influence.ihvp import ihvp, low_rank
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence.query_batches import cluster_queries
from lancet_ds.influence.taps import TapPoint
from lancet_ds.options import at_least, positive, recorded
from lancet_ds.run_dir import SHARD_INDEX, RunDir
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_inference_engine, releases_engines
from lancet_ds.stage_guard import finished, record, stage_fingerprint


@dataclass
class QueriesArgs:
    """Options of the query gradients, their k-means batches and the IHVPs."""

    batches: str = "10"
    """k-means query batches (Eq. 13), a number; 'all' = one query per batch (the paper's single-query mode)."""
    curvature: Literal["fitted", "identity"] = "fitted"
    """'fitted': IHVP(V) = (Ĝ + λI)⁻¹ V with the run's factors (Eq. 12–13); 'identity': H = I, the IHVP is V
    itself and the scores are plain gradient inner products on the same sublayers (the no-curvature baseline
    of the recall comparison; the factors then only name the sublayers)."""
    damping: float | None = None
    """λ for every sublayer (default: the damping rule, `damping_factor` × mean curvature diagonal, per sublayer)."""
    damping_factor: float | None = None
    """The damping rule's factor: λ = factor × mean of each sublayer's curvature diagonal (λ_S λ_Aᵀ, or EK-FAC's
    Λ̂); default the factor the factors recorded (0.1)."""
    ihvp_rank: int | None = None
    """Store each IHVP as rank-r factors (less memory; the error is reported in batches.json)."""
    micro_batch: int = 8
    """Queries per rank per pass."""
    max_length: int = 512
    """Tokens per query (prompt + response), right-truncated."""
    response_tokens: int = 0
    """Only the first N response tokens of each query enter its gradient; 0: all of them (the
    paper's). The opening is where a model complies or refuses; the steps after it share their words with
    harmless texts on the same topic. The query set that evaluation reads keeps every token."""
    seed: int = 0
    """Seed of k-means."""
    memory_budget: str | None = None
    """Per-rank memory for the weights shard, activations, owned factors and IHVPs (e.g. 70GB): the query
    gradients are summed over as many partitions of sublayers as needed; refused before any work when nothing fits."""

    def validate(self) -> list[str]:
        problems = positive(self, "micro_batch") + at_least(self, "max_length", 2) + budget_problems(self.memory_budget)
        problems += at_least(self, "response_tokens", 0)
        problems += positive(self, "ihvp_rank", "damping", "damping_factor", allow_none=True)
        if self.damping is not None and self.damping_factor is not None:
            problems.append(f"damping and damping_factor: give one of them, got {self.damping!r} and "
                            f"{self.damping_factor!r} (damping is λ itself, damping_factor scales each sublayer's mean curvature)")
        if self.batches != "all" and not (self.batches.isdigit() and int(self.batches) >= 1):
            problems.append(f"batches: must be a whole number ≥ 1 or 'all', got {self.batches!r}")
        return problems

    def record(self) -> dict:
        """The options as records keep them (`options.recorded`); `damping_factor` only when given and
        `response_tokens` only when not 0, so a record made before the option existed still matches."""
        record = asdict(self)
        if self.damping_factor is None:
            record.pop("damping_factor")
        if not self.response_tokens:
            record.pop("response_tokens")
        return record

    def rule_factor(self, fmeta: dict) -> float | None:
        """The damping rule's factor in use: this option's, else the one the factors recorded; None when no rule
        applies (`damping` gives λ itself, or identity curvature has none)."""
        if self.damping is not None or self.curvature == "identity":
            return None
        return fmeta["damping"]["factor"] if self.damping_factor is None else self.damping_factor


def opening(sample: EncodedSample, n: int) -> EncodedSample:
    """`sample` with only its first `n` response tokens in the loss mask (n = 0: unchanged): the query's
    log-likelihood whose gradient ∇θ log p(z_q) enters the IHVPs (Eq. 12–13) is then that of the response's
    opening. Safety alignment acts mostly on a response's first tokens (Qi et al. 2024, "Safety Alignment Should
    Be Made More Than Just a Few Tokens Deep"); `QueriesArgs.response_tokens` says what was measured."""
    if not n or sum(sample.loss_mask) <= n:
        return sample
    first = sample.loss_mask.index(1)
    mask = sample.loss_mask[:first + n] + [0] * (len(sample.loss_mask) - first - n)
    return replace(sample, loss_mask=mask)


IHVP_KEYS = ("QA", "LA", "QS", "LS", "Lambda")  # what an IHVP needs of a point's factors


def load_run_factors(run: RunDir, model_dir: str, owned_only: bool = False):
    """The run's factors, refused unless they were fitted on `model_dir`'s exact weights; with `owned_only`
    just the eigendecompositions of the points this rank owns (k mod W), read from the shards."""
    only = None
    if owned_only and run.factors_index.exists():
        names = read_json(run.factors_index)["metadata"]["sublayers"]
        world, rank = dist_utils.world_size(), dist_utils.rank()
        only = {name for k, name in enumerate(names) if dist_utils.owner(k, world) == rank}
    return load_factors(run.factors, model_fingerprint=model_fingerprint(model_dir), only=only,
                        keys=IHVP_KEYS if owned_only else FACTOR_KEYS)


def batch_ihvps(sums: QueryGradientSums, factors: dict, fmeta: dict, names: list[str], group: list[int],
                batches: list[list[str]], args: QueriesArgs, tensors: dict, dampings: dict, errors: dict) -> None:
    """Eq. 12–13 for the points of `group`: V_B = mean of the batch's query gradients, summed over ranks into
    the point's owner, which computes IHVP(V_B) with the damping rule and adds to `tensors` (to store),
    `dampings` (per sublayer) and `errors` (low-rank error per IHVP). Each V is freed once used."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    sizes = torch.tensor([len(ids) for ids in batches], dtype=torch.float64)
    for k in group:
        name = names[k]
        v = dist_utils.reduce_sum(sums.sums.pop(name)["V"], dist_utils.owner(k, world))
        if dist_utils.owner(k, world) != rank:
            continue
        v = v.cpu() / sizes[:, None, None]  # V_B = mean over B
        if args.curvature == "identity":
            dampings[name], x = None, v
        else:
            f = factors[name]
            diag = curvature_diagonal(f["LS"].double(), f["LA"].double(), f["Lambda"].double() if "Lambda" in f else None)
            factor = args.rule_factor(fmeta)
            lam = args.damping if factor is None else default_damping(diag, factor)
            dampings[name] = lam
            x = ihvp(v, f, damping=lam)
        for b in range(len(batches)):
            if args.ihvp_rank:
                u, w, err = low_rank(x[b], args.ihvp_rank)
                tensors[f"{name}.ihvp.{b}.U"], tensors[f"{name}.ihvp.{b}.V"] = u, w
                errors[f"{name}.ihvp.{b}"] = err
            else:
                tensors[f"{name}.ihvp.{b}"] = x[b]


def _batch_of(samples, batches: list[list[str]]) -> list[int]:
    """Each query's batch index, in the queries' order."""
    position = {s.id: i for i, s in enumerate(samples)}
    batch_of = [0] * len(samples)
    for b, ids in enumerate(batches):
        for qid in ids:
            batch_of[position[qid]] = b
    return batch_of


@releases_engines
def run_queries(run: RunDir | str, queries: DataSpec, args: QueriesArgs, model_dir: str, ds_config_path: str,
                overwrite: bool = False) -> dict:
    """Query gradients, batches and IHVPs under `run.queries`; returns batches.json's content."""
    run = RunDir.of(run)
    dist_utils.init_distributed()
    world, rank = dist_utils.world_size(), dist_utils.rank()
    factors, fmeta = load_run_factors(run, model_dir, owned_only=True)
    out = run.queries
    config = {"queries": queries.fingerprint(), "args": recorded(args), "factors": json_fingerprint(fmeta),
              "lancet_ds_version": __version__}
    fingerprint = stage_fingerprint(out, config, inputs=(queries.path,))
    if finished(out, SHARD_INDEX, fingerprint, overwrite, "queries", config):
        return read_json(run.batches)
    tokenizer = load_tokenizer(model_dir)
    sink = stage_sink(queries.on_bad_record, out)
    samples, encoded = load_encoded(queries.path, queries.schema, tokenizer, args.max_length, sink, queries.split)
    if not encoded:
        raise BadInputError(nothing_usable(queries.path, "influence query", out))
    batches = cluster_queries(samples, args.batches, args.seed)
    graded = [opening(e, args.response_tokens) for e in encoded]  # the gradient's tokens; query_set keeps all
    batch_of = _batch_of(samples, batches)
    ds_config = load_ds_config(ds_config_path)
    engine = make_inference_engine(load_model(model_dir, ds_config), ds_config)
    points = [TapPoint(**t) for t in fmeta["taps"]]
    names = [p.name for p in points]
    shapes = capacity.points_of(engine.module, points)
    fixed = capacity.stage_fixed_bytes(engine.module, shapes, ds_config, args.micro_batch, args.max_length, 8)
    schedule = capacity.queries_schedule(shapes, world, len(batches), fmeta["dtype"], fmeta["eigen_correction"],
                                         args.ihvp_rank, parse_bytes(args.memory_budget), fixed)
    say(f"queries: {len(samples)} queries in {len(batches)} batches, gradients on {len(points)} tap points"
        + (f" in {len(schedule['groups'])} partitions" if len(schedule["groups"]) > 1 else ""))
    ctx = BatchContext()
    tensors, dampings, errors = {}, {}, {}
    peak = Peak()
    for group in schedule["groups"]:
        sums = QueryGradientSums(ctx, torch.float64, batch_of, len(batches))
        run_passes(engine.module, graded, [points[k] for k in group], sums, ctx, torch.float64, args.micro_batch,
                   tokenizer.pad_token_id, "empirical", args.seed,
                   after_pass=lambda _: peak.observe(factors, tensors, sums.sums), label="queries: gradients")
        batch_ihvps(sums, factors, fmeta, names, group, batches, args, tensors, dampings, errors)
        peak.observe(factors, tensors)
    metadata = {"model_fingerprint": fmeta["model_fingerprint"], "sublayers": names, "method": fmeta["method"],
                "curvature": args.curvature, "num_batches": len(batches), "ihvp_rank": args.ihvp_rank, "lancet_ds_version": __version__}
    if tensors:
        save_shard(out, rank, world, tensors, metadata, prefix="queries")
    gathered = dist_utils.all_gather_object({"names": sorted(tensors), "dampings": dampings, "errors": errors,
                                             "peak": peak.bytes, "owned": tensor_bytes(tensors)})
    record(out, fingerprint, config)
    if dist_utils.is_main():
        weight_map = {t: shard_name(r, world, "queries") for r, part in enumerate(gathered) for t in part["names"]}
        all_damp = {k2: v2 for part in gathered for k2, v2 in part["dampings"].items()}
        all_err = {k2: v2 for part in gathered for k2, v2 in part["errors"].items()}
        summary = {"batches": [{"batch": b, "query_ids": ids, "size": len(ids)} for b, ids in enumerate(batches)],
                   "damping": all_damp, "method": fmeta["method"], "curvature": args.curvature,
                   "damping_factor": args.rule_factor(fmeta),
                   "ihvp_rank": args.ihvp_rank,
                   "low_rank_error": ({"max": max(all_err.values()), "mean": sum(all_err.values()) / len(all_err),
                                       "per_sublayer": {n: max(e for t, e in all_err.items() if t.startswith(n + ".ihvp."))
                                                        for n in names},
                                       "per_ihvp": all_err} if all_err else None),
                   "memory": {"budget_bytes": parse_bytes(args.memory_budget), "partitions": len(schedule["groups"]),
                              "peak_bytes_per_rank": [part["peak"] for part in gathered],
                              "owned_ihvp_bytes_per_rank": [part["owned"] for part in gathered],
                              "predicted_peak_bytes_per_rank": schedule["peak_bytes"]},
                   "rejects": sink.summary()}
        write_jsonl(run.query_set, [{"id": e.id, "input_ids": e.input_ids, "loss_mask": e.loss_mask}
                                              for e in encoded])
        write_json(run.batches, summary)
        write_index(out, weight_map, metadata)  # the marker of finished queries: written last
    dist_utils.barrier()
    say(f"queries: IHVPs for {len(batches)} batches written to {out}")
    return read_json(run.batches)


def ihvp_index(run: RunDir, model_dir: str) -> tuple[dict, dict]:
    """The IHVPs' index.json and batches.json; refused when made for another model."""
    out = run.queries
    if not run.queries_index.exists():
        raise ConfigError(f"{out}/index.json: missing. Run `lancet-ds queries --run {run}` first.")
    index = read_json(run.queries_index)
    if index["metadata"]["model_fingerprint"] != model_fingerprint(model_dir):
        raise ConfigError(f"{out}: these IHVPs were made for another model. Rerun `lancet-ds queries`.")
    return index, read_json(run.batches)


def unit_columns(units: list[tuple[str, int]]) -> dict[str, list[int]]:
    """{sublayer: its query batches} of (sublayer, batch) units, in order."""
    columns: dict[str, list[int]] = {}
    for name, b in units:
        columns.setdefault(name, []).append(b)
    return columns


def load_ihvp_units(run: RunDir, index: dict, units: list[tuple[str, int]], dtype: torch.dtype,
                    device: torch.device) -> tuple[dict[str, torch.Tensor | tuple], dict[str, list[int]]]:
    """The IHVPs of the (sublayer, batch) `units` only, read from the shards into `device` in `dtype`:
    ({sublayer: (k, P, M) tensor, or ((k, P, r), (k, M, r)) low-rank factors}, {sublayer: its k batches})."""
    from safetensors import safe_open

    low_rank = bool(index["metadata"]["ihvp_rank"])
    columns = unit_columns(units)
    keys = [f"{n}.ihvp.{b}{part}" for n, bs in columns.items() for b in bs for part in ((".U", ".V") if low_rank else ("",))]
    flat: dict[str, torch.Tensor] = {}
    for file in sorted({index["weight_map"][k] for k in keys}):
        path = run.queries / file
        try:
            with safe_open(str(path), "pt") as fh:
                flat.update({k: fh.get_tensor(k) for k in keys if index["weight_map"][k] == file})
        except Exception as exc:  # noqa: BLE001 - any unreadable shard means the same to the user
            raise ConfigError(f"{path}: cannot read the IHVP shard ({exc}). Rerun `lancet-ds queries`.") from None
    def stacked(name: str, bs: list[int], part: str = "") -> torch.Tensor:  # stacked on the host, moved once
        return torch.stack([flat.pop(f"{name}.ihvp.{b}{part}") for b in bs]).to(device, dtype)

    ihvps: dict[str, torch.Tensor | tuple] = {}
    for name, bs in columns.items():
        ihvps[name] = (stacked(name, bs, ".U"), stacked(name, bs, ".V")) if low_rank else stacked(name, bs)
    return ihvps, columns
