"""`lancet-ds score`: the influence I(z_m, B) of every candidate training sample on every query batch
(Eq. 9), scored inside the sublayer hooks, candidates dealt over ranks with equal pass counts.

The IHVPs on a rank's device are one partition of the (sublayer, query batch) pairs at a time, sized to
`memory_budget` (`capacity.score_schedule`; one partition without a budget): scoring makes one pass over
the candidates per partition, each adding its sublayers' share. Rows — id, partition, that share per
batch — are appended to `RUN_DIR/scores/part-RRRRR.jsonl` after every pass (a rerun skips the (partition,
id) pairs already there, whatever the world size), then summed over partitions and merged into `scores/scores.jsonl`, one row per candidate sorted
by id: `id`, `prompt`, `response`, `meta` (the corpus's extra fields), `score_<batch>` for each batch,
`score` = Σ_B |B|·I(z_m, B), the total influence on all queries (Σ_q I(z_m, q), whatever the
batching), and its `rise` and `fall`, the batches it raises and lowers apart (the ranking the tool shows and
grades, `influence.ranking`). I > 0: up-weighting z_m raises the probability of the undesirable responses. Raw scores
grow with sequence length and the number of query tokens; IBO normalises them by max |I|.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import torch

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import stage_sink
from lancet_ds.data.corpus import encode_samples
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.faults import maybe_inject_fault
from lancet_ds.fileio import append_lines, read_json, read_jsonl, repair_appended, write_json, write_jsonl
from lancet_ds.influence.covariance import BatchContext
from lancet_ds.fingerprint import json_fingerprint
from lancet_ds.influence.gradients import BroadcastIHVPs, InfluenceScores
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence import capacity
from lancet_ds.influence.fit import DTYPES
from lancet_ds.influence.memory import Peak, budget_problems, format_bytes, parse_bytes
from lancet_ds.influence.ranking import rise_and_fall
from lancet_ds.influence.queries import ihvp_index, load_ihvp_units, unit_columns
from lancet_ds.influence.taps import TapPoint
from lancet_ds.recall.stage import batch_similarities
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_inference_engine, releases_engines
from lancet_ds.options import at_least, positive, recorded
from lancet_ds.run_dir import RunDir
from lancet_ds.stage_guard import resumable, stage_fingerprint


@dataclass
class ScoreArgs:
    """Options of the influence scoring."""

    micro_batch: int = 8
    """Candidates per rank per pass."""
    per_sublayer: bool = False
    """Also store each sublayer's share of the scores."""
    max_length: int = 512
    """Tokens per candidate (prompt + response), right-truncated."""
    dtype: Literal["float32", "float64"] = "float32"
    """Dtype of the IHVPs on the device and of the score accumulation (float64: exact to more digits, twice the memory)."""
    memory_budget: str | None = None
    """Per-rank memory for the weights shard, activations and the IHVPs on the device (e.g. 70GB): scoring
    makes as many passes over the candidates as needed, each with one partition of the IHVPs."""
    by: Literal["influence", "tfidf"] = "influence"
    """influence: I(z, B) with the IHVPs (Eq. 9, 12–13). tfidf: no model pass; a candidate's score on batch B is
    its best TF-IDF similarity to B's queries in the recall (0 where it was not in a query's top-k), for the
    paper's baselines that post-train on TF-IDF recall (GA, PBO): same rows, same selection, other ranking."""
    ihvp_placement: Literal["replicated", "sharded"] = "replicated"
    """replicated: every rank holds every IHVP of a partition. sharded: a rank holds those of the sublayers it
    owns (1/ranks of them) and each sublayer's owner broadcasts its IHVPs when the hooks need them (about
    all IHVPs' bytes of traffic per pass; same scores)."""

    def validate(self) -> list[str]:
        return positive(self, "micro_batch") + at_least(self, "max_length", 2) + budget_problems(self.memory_budget)


def candidate_ids(run: RunDir) -> set[str] | None:
    """The recalled ids, or None when recall ran with --score-all."""
    if not run.recall_summary.exists():
        raise ConfigError(f"{run.recall_summary}: missing. Run `lancet-ds recall --run {run}` first (with "
                          "--score-all to score the whole corpus).")
    if read_json(run.recall_summary)["all"]:
        return None
    return set(read_json(run.candidates))


def _scored(run: RunDir) -> set[tuple[int, str]]:
    """(partition, id) pairs already scored by an earlier, interrupted run, on any world size (torn last
    lines cut first)."""
    if dist_utils.is_main():
        for part in run.score_parts():
            warning = repair_appended(part)
            if warning:
                say(f"score: warning: {warning}")
    dist_utils.barrier()
    return {(row["partition"], row["id"]) for part in run.score_parts() for row in read_jsonl(part)}


def part_rows(ctx: BatchContext, scores: InfluenceScores, samples: list, partition: int,
               per_sublayer: bool) -> list[str]:
    """This pass's part rows (JSON lines): per candidate its id, the partition and this partition's share
    of I(z, B) for every batch B (sublayers outside the partition add 0)."""
    rows = []
    for b, i in enumerate(ctx.indices):
        if i is None:
            continue
        row = {"id": samples[i].id, "partition": partition, "scores": scores.current[b].tolist()}
        if per_sublayer:
            row["by_sublayer"] = {n: t[b].tolist() for n, t in scores.by_sublayer.items()}
        rows.append(json.dumps(row))
    return rows


def _merge(run: RunDir, todo_all: list, sizes: torch.Tensor, sink) -> tuple[dict, list[dict]]:
    """Rank 0: the parts summed over partitions into the rows of scores.jsonl (sorted by id): per candidate
    its text, `score_<b>` per batch, the total `score` = Σ_B |B|·I(z, B) and its `rise` and `fall`
    (`influence.ranking`); writes the scored set; returns (summary, rows)."""
    parts: dict[str, dict] = {}
    for p in run.score_parts():
        for r in read_jsonl(p):
            slot = parts.setdefault(r["id"], {"scores": torch.zeros(len(sizes), dtype=torch.float64), "by_sublayer": {},
                                              "seen": set()})
            if r["partition"] in slot["seen"]:  # a pass redone after a kill wrote it again
                continue
            slot["seen"].add(r["partition"])
            slot["scores"] += torch.tensor(r["scores"], dtype=torch.float64)
            for name, shares in r.get("by_sublayer", {}).items():  # a sublayer's batches may span partitions
                known = slot["by_sublayer"].get(name)
                slot["by_sublayer"][name] = shares if known is None else [x + y for x, y in zip(known, shares)]
    ordered = []
    for s, _ in sorted(todo_all, key=lambda x: x[0].id):
        slot = parts[s.id]
        rise, fall = rise_and_fall(slot["scores"].tolist(), sizes.tolist())
        row = {"id": s.id, "prompt": s.prompt, "response": s.response, "meta": s.meta,
               **{f"score_{k}": v for k, v in enumerate(slot["scores"].tolist())},
               "score": float((slot["scores"] * sizes).sum()), "rise": rise, "fall": fall}
        if slot["by_sublayer"]:
            row["by_sublayer"] = slot["by_sublayer"]
        ordered.append(row)
    write_jsonl(run.scored_set, [{"id": s.id, "input_ids": e.input_ids, "loss_mask": e.loss_mask}
                                 for s, e in sorted(todo_all, key=lambda x: x[0].id)])
    summary = {"candidates": len(ordered), "batches": len(sizes), "positive": sum(r["score"] > 0 for r in ordered),
               "max_abs_score": max((abs(r["score"]) for r in ordered), default=0.0), "rejects": sink.summary()}
    return summary, ordered


@releases_engines
def run_scores(run: RunDir | str, corpus: DataSpec, args: ScoreArgs, model_dir: str, ds_config_path: str,
               overwrite: bool = False) -> dict:
    """Scores of every candidate under `run.scores`; returns its summary."""
    run = RunDir.of(run)
    dist_utils.init_distributed()
    world, rank = dist_utils.world_size(), dist_utils.rank()
    out = run.scores
    index, batches = ihvp_index(run, model_dir)
    wanted = candidate_ids(run)
    config = {"corpus": corpus.fingerprint(), "args": recorded(args), "queries": json_fingerprint(batches),
              "lancet_ds_version": __version__,
              "candidates": json_fingerprint(sorted(wanted)) if wanted is not None else "all"}
    fingerprint = stage_fingerprint(out, config, inputs=(corpus.path,))
    if resumable(out, run.score_rows.name, fingerprint, config, overwrite, "score"):
        return read_json(run.scores_summary)
    done = _scored(run)
    tokenizer = load_tokenizer(model_dir)
    sink = stage_sink(corpus.on_bad_record, out)
    todo_all = list(encode_samples(
        (s for s in corpus.samples(sink) if (wanted is None or s.id in wanted)), tokenizer, args.max_length, sink))
    if done:
        say(f"score: resuming, {len(done)} candidates already scored")
    sizes = torch.tensor([b["size"] for b in batches["batches"]], dtype=torch.float64)
    if args.by == "tfidf":
        return _similarity_scores(run, todo_all, sizes, batches, sink)
    ds_config = load_ds_config(ds_config_path)
    engine = make_inference_engine(load_model(model_dir, ds_config), ds_config)
    points = [TapPoint(**t) for t in read_json(run.factors_index)["metadata"]["taps"]]
    names = [p.name for p in points]
    k_of = {n: k for k, n in enumerate(names)}
    shapes = capacity.points_of(engine.module, points)
    dtype = DTYPES[args.dtype]
    fixed = capacity.stage_fixed_bytes(engine.module, shapes, ds_config, args.micro_batch, args.max_length,
                                       dtype.itemsize)
    rank_r = index["metadata"]["ihvp_rank"]
    sharded = args.ihvp_placement == "sharded"
    schedule = capacity.score_schedule(shapes, len(sizes), rank_r, args.dtype, parse_bytes(args.memory_budget), fixed,
                                       world, sharded)
    partitions = schedule["partitions"]
    if len(partitions) > 1:
        say(f"score: {len(partitions)} passes over the candidates, each with one partition of the IHVPs "
            f"(at most {format_bytes(max(schedule['peak_bytes']))} per rank)")
    part, peak, passes = run.score_part(rank), Peak(), 0
    for p, units in enumerate(partitions):
        todo = [(s, e) for s, e in todo_all if (p, s.id) not in done]
        mine = [(k, b) for k, b in units if not sharded or dist_utils.owner(k, world) == rank]
        ihvps, _ = load_ihvp_units(run, index, [(names[k], b) for k, b in mine], dtype, dist_utils.device())
        columns = unit_columns([(names[k], b) for k, b in units])
        if sharded:
            ihvps = BroadcastIHVPs(ihvps, {n: dist_utils.owner(k_of[n], world) for n in columns}, columns,
                                   {n: _unit_shapes(shapes[k_of[n]], len(bs), rank_r) for n, bs in columns.items()},
                                   dtype, dist_utils.device())
        ctx = BatchContext()
        scores = InfluenceScores(ctx, dtype, ihvps, args.per_sublayer, columns, len(sizes))

        def after(_: int) -> None:
            nonlocal passes
            append_lines(part, part_rows(ctx, scores, [s for s, _ in todo], p, args.per_sublayer))
            scores.reset()
            passes += 1  # over all partitions: where an injected fault strikes
            maybe_inject_fault(passes)

        run_passes(engine.module, [e for _, e in todo], [points[k] for k in sorted({k for k, _ in units})], scores, ctx,
                   dtype, args.micro_batch, tokenizer.pad_token_id, "empirical", 0, after_pass=after,
                   label=f"score: partition {p + 1}/{len(partitions)}")
        peak.observe(ihvps.mine if sharded else ihvps, extra=ihvps.largest_borrowed if sharded else 0)
        del ihvps, scores
    dist_utils.barrier()
    peaks = dist_utils.all_gather_object(peak.bytes)
    if dist_utils.is_main():
        summary, ordered = _merge(run, todo_all, sizes, sink)
        summary["memory"] = {"budget_bytes": parse_bytes(args.memory_budget), "partitions": len(partitions),
                             "dtype": args.dtype, "peak_bytes_per_rank": peaks,
                             "ihvp_placement": args.ihvp_placement,
                             "predicted_peak_bytes_per_rank": schedule["peak_bytes"]}
        write_json(run.scores_summary, summary)
        write_jsonl(run.score_rows, ordered)  # the marker of finished scores: written last
    dist_utils.barrier()
    say(f"score: {len(todo_all)} candidates scored on {world} rank(s); {run.score_rows}")
    return read_json(run.scores_summary)


def _similarity_scores(run: RunDir, todo_all: list, sizes: torch.Tensor, batches: dict, sink) -> dict:
    """`--by tfidf`: the rows of scores.jsonl from the recall's similarities (`recall.batch_similarities`)."""
    if dist_utils.is_main():
        sims = batch_similarities(run.recall_rows, [b["query_ids"] for b in batches["batches"]])
        append_lines(run.score_part(0), [json.dumps({"id": s.id, "partition": 0, "scores": sims.get(s.id, [0.0] * len(sizes))})
                                         for s, _ in todo_all])
        summary, ordered = _merge(run, todo_all, sizes, sink)
        summary["by"] = "tfidf"
        write_json(run.scores_summary, summary)
        write_jsonl(run.score_rows, ordered)  # the marker of finished scores: written last
    dist_utils.barrier()
    say(f"score: {len(todo_all)} candidates ranked by TF-IDF similarity; {run.score_rows}")
    return read_json(run.scores_summary)


def _unit_shapes(point: capacity.Point, k: int, ihvp_rank: int | None) -> tuple[tuple[int, ...], ...]:
    """The shapes of a point's k IHVPs as stored: (k, P, M), or low-rank ((k, P, r), (k, M, r))."""
    if not ihvp_rank:
        return ((k, point.P, point.M),)
    r = min(ihvp_rank, point.P, point.M)
    return ((k, point.P, r), (k, point.M, r))
