"""`lancet-ds queries`: influence queries → modular gradients on the sharded model → k-means batches
→ per-batch IHVPs, stored as safetensors under `RUN_DIR/queries/` (DESIGN.md section 3, Eq. 12–13).

Outputs: `queries-RRRRR-of-WWWWW.safetensors` shards (tensor `<sublayer>.ihvp.<batch>` of shape P×M, or
with `ihvp_rank` the factors `<sublayer>.ihvp.<batch>.U` (P×r, singular values folded in) and `.V`
(M×r)), `index.json` like the factors', `batches.json` (batch → query ids, the damping used per
sublayer, and the low-rank approximation error when truncated) and `query_set.jsonl`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import stage_sink
from lancet_ds.data.corpus import load_encoded
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, write_json, write_jsonl
from lancet_ds.influence.covariance import BatchContext
from lancet_ds.influence.eigen import curvature_diagonal, default_damping
from lancet_ds.influence.factor_store import load_factors, save_shard, shard_name, write_index
from lancet_ds.fingerprint import json_fingerprint, model_fingerprint
from lancet_ds.influence.gradients import QueryGradientSums
from lancet_ds.influence.ihvp import ihvp, low_rank
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence.query_batches import cluster_queries
from lancet_ds.influence.taps import TapPoint
from lancet_ds.options import at_least, positive
from lancet_ds.run_dir import SHARD_INDEX, RunDir
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_inference_engine
from lancet_ds.stage_guard import finished, record


@dataclass
class QueriesArgs:
    """Options of the query gradients, their k-means batches and the IHVPs."""

    batches: str = "10"
    """k-means query batches (Eq. 13), a number; 'all' = one query per batch (the paper's single-query mode)."""
    damping: float | None = None
    """λ for every sublayer (default 0.1 × mean curvature diagonal, per sublayer)."""
    ihvp_rank: int | None = None
    """Store each IHVP as rank-r factors (less memory; the error is reported in batches.json)."""
    micro_batch: int = 8
    """Queries per rank per pass."""
    max_length: int = 512
    """Tokens per query (prompt + response), right-truncated."""
    seed: int = 0
    """Seed of k-means."""

    def validate(self) -> list[str]:
        problems = positive(self, "micro_batch") + at_least(self, "max_length", 2)
        problems += positive(self, "ihvp_rank", "damping", allow_none=True)
        if self.batches != "all" and not (self.batches.isdigit() and int(self.batches) >= 1):
            problems.append(f"batches: must be a whole number ≥ 1 or 'all', got {self.batches!r}")
        return problems


def load_run_factors(run: RunDir, model_dir: str):
    """The run's factors, refused unless they were fitted on `model_dir`'s exact weights."""
    return load_factors(run.factors, model_fingerprint=model_fingerprint(model_dir))


def batch_ihvps(sums: QueryGradientSums, factors: dict, fmeta: dict, names: list[str], batches: list[list[str]],
                args: QueriesArgs) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, float]]:
    """Eq. 12–13 for the sublayers this rank owns: V_B = mean of the batch's query gradients (summed over
    ranks), then IHVP(V_B) with the damping rule; returns (tensors to store, damping per sublayer, low-rank
    error per IHVP)."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    sizes = torch.tensor([len(ids) for ids in batches], dtype=torch.float64)
    tensors, dampings, errors = {}, {}, {}
    for i, name in enumerate(names):
        v = dist_utils.all_reduce_sum(sums.sums[name]["V"]).cpu() / sizes[:, None, None]  # V_B = mean over B
        if dist_utils.owner(i, world) != rank:
            continue
        f = factors[name]
        diag = curvature_diagonal(f["LS"].double(), f["LA"].double(), f["Lambda"].double() if "Lambda" in f else None)
        lam = default_damping(diag, fmeta["damping"]["factor"]) if args.damping is None else args.damping
        dampings[name] = lam
        x = ihvp(v, f, damping=lam)
        for b in range(len(batches)):
            if args.ihvp_rank:
                u, w, err = low_rank(x[b], args.ihvp_rank)
                tensors[f"{name}.ihvp.{b}.U"], tensors[f"{name}.ihvp.{b}.V"] = u, w
                errors[f"{name}.ihvp.{b}"] = err
            else:
                tensors[f"{name}.ihvp.{b}"] = x[b]
    return tensors, dampings, errors


def _batch_of(samples, batches: list[list[str]]) -> list[int]:
    """Each query's batch index, in the queries' order."""
    position = {s.id: i for i, s in enumerate(samples)}
    batch_of = [0] * len(samples)
    for b, ids in enumerate(batches):
        for qid in ids:
            batch_of[position[qid]] = b
    return batch_of


def run_queries(run: RunDir | str, queries: DataSpec, args: QueriesArgs, model_dir: str, ds_config_path: str,
                overwrite: bool = False) -> dict:
    """Query gradients, batches and IHVPs under `run.queries`; returns batches.json's content."""
    run = RunDir.of(run)
    dist_utils.init_distributed()
    world, rank = dist_utils.world_size(), dist_utils.rank()
    factors, fmeta = load_run_factors(run, model_dir)
    out = run.queries
    config = {"queries": queries.fingerprint(), "args": asdict(args), "factors": json_fingerprint(fmeta),
              "lancet_ds_version": __version__}
    fingerprint = json_fingerprint(config)
    if finished(out, SHARD_INDEX, fingerprint, overwrite, "queries", config):
        return read_json(run.batches)
    tokenizer = load_tokenizer(model_dir)
    sink = stage_sink(queries.on_bad_record, out)
    samples, encoded = load_encoded(queries.path, queries.schema, tokenizer, args.max_length, sink, queries.split)
    if not encoded:
        raise ConfigError(f"{queries.path}: no usable influence query.")
    batches = cluster_queries(samples, args.batches, args.seed)
    batch_of = _batch_of(samples, batches)
    ds_config = load_ds_config(ds_config_path)
    engine = make_inference_engine(load_model(model_dir, ds_config), ds_config)
    points = [TapPoint(**t) for t in fmeta["taps"]]
    names = [p.name for p in points]
    say(f"queries: {len(samples)} queries in {len(batches)} batches, gradients on {len(points)} tap points")
    ctx = BatchContext()
    sums = QueryGradientSums(ctx, torch.float64, batch_of, len(batches))
    run_passes(engine.module, encoded, points, sums, ctx, torch.float64, args.micro_batch, tokenizer.pad_token_id,
               "empirical", args.seed)
    tensors, dampings, errors = batch_ihvps(sums, factors, fmeta, names, batches, args)
    metadata = {"model_fingerprint": fmeta["model_fingerprint"], "sublayers": names, "method": fmeta["method"],
                "num_batches": len(batches), "ihvp_rank": args.ihvp_rank, "lancet_ds_version": __version__}
    if tensors:
        save_shard(out, rank, world, tensors, metadata, prefix="queries")
    gathered = dist_utils.all_gather_object({"names": sorted(tensors), "dampings": dampings, "errors": errors})
    record(out, fingerprint, config)
    if dist_utils.is_main():
        weight_map = {t: shard_name(r, world, "queries") for r, part in enumerate(gathered) for t in part["names"]}
        all_damp = {k2: v2 for part in gathered for k2, v2 in part["dampings"].items()}
        all_err = {k2: v2 for part in gathered for k2, v2 in part["errors"].items()}
        summary = {"batches": [{"batch": b, "query_ids": ids, "size": len(ids)} for b, ids in enumerate(batches)],
                   "damping": all_damp, "method": fmeta["method"], "ihvp_rank": args.ihvp_rank,
                   "low_rank_error": ({"max": max(all_err.values()), "mean": sum(all_err.values()) / len(all_err),
                                       "per_ihvp": all_err} if all_err else None),
                   "rejects": sink.summary()}
        write_jsonl(run.query_set, [{"id": e.id, "input_ids": e.input_ids, "loss_mask": e.loss_mask}
                                              for e in encoded])
        write_json(run.batches, summary)
        write_index(out, weight_map, metadata)  # the marker of finished queries: written last
    dist_utils.barrier()
    say(f"queries: IHVPs for {len(batches)} batches written to {out}")
    return read_json(run.batches)


def load_ihvps(run: RunDir, model_dir: str) -> tuple[dict[str, torch.Tensor | tuple], dict, dict]:
    """{sublayer: (K, P, M) tensor, or ((K, P, r), (K, M, r)) low-rank factors}, the index metadata and
    batches.json; refused when made for another model or factor set."""
    from safetensors.torch import load_file

    out = run.queries
    if not run.queries_index.exists():
        raise ConfigError(f"{out}/index.json: missing. Run `lancet-ds queries --run {run}` first.")
    index = read_json(run.queries_index)
    meta = index["metadata"]
    if meta["model_fingerprint"] != model_fingerprint(model_dir):
        raise ConfigError(f"{out}: these IHVPs were made for another model. Rerun `lancet-ds queries`.")
    flat = {}
    for file in sorted(set(index["weight_map"].values())):
        try:
            flat.update(load_file(str(out / file)))
        except Exception as exc:  # noqa: BLE001 - any unreadable shard means the same to the user
            raise ConfigError(f"{out / file}: cannot read the IHVP shard ({exc}). Rerun `lancet-ds queries`.") from None
    k = meta["num_batches"]
    ihvps: dict[str, torch.Tensor | tuple] = {}
    for name in meta["sublayers"]:
        if meta["ihvp_rank"]:
            ihvps[name] = (torch.stack([flat[f"{name}.ihvp.{b}.U"] for b in range(k)]),
                           torch.stack([flat[f"{name}.ihvp.{b}.V"] for b in range(k)]))
        else:
            ihvps[name] = torch.stack([flat[f"{name}.ihvp.{b}"] for b in range(k)])
    return ihvps, meta, read_json(run.batches)
