"""`lancet-ds score`: the influence I(z_m, B) of every candidate training sample on every query batch
(Eq. 9), scored inside the sublayer hooks, candidates dealt over ranks with equal pass counts.

Rows are appended to `RUN_DIR/scores/part-RRRRR.jsonl` after every pass (a rerun skips ids already
there, whatever the world size), then merged into `scores/scores.jsonl`, one row per candidate sorted
by id: `id`, `prompt`, `response`, `meta` (the corpus's extra fields), `score_<batch>` for each batch,
and `score` = Σ_B |B|·I(z_m, B), the total influence on all queries (Σ_q I(z_m, q), whatever the
batching). I > 0: up-weighting z_m raises the probability of the undesirable responses. Raw scores
grow with sequence length and the number of query tokens; IBO normalises them by max |I|.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

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
from lancet_ds.influence.gradients import InfluenceScores
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence.queries import load_ihvps
from lancet_ds.influence.taps import TapPoint
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_inference_engine
from lancet_ds.options import at_least, positive
from lancet_ds.run_dir import RunDir
from lancet_ds.stage_guard import resumable


@dataclass
class ScoreArgs:
    """Options of the influence scoring."""

    micro_batch: int = 8
    """Candidates per rank per pass."""
    per_sublayer: bool = False
    """Also store each sublayer's share of the scores."""
    max_length: int = 512
    """Tokens per candidate (prompt + response), right-truncated."""

    def validate(self) -> list[str]:
        return positive(self, "micro_batch") + at_least(self, "max_length", 2)


def candidate_ids(run: RunDir) -> set[str] | None:
    """The recalled ids, or None when recall ran with --score-all."""
    if not run.recall_summary.exists():
        raise ConfigError(f"{run.recall_summary}: missing. Run `lancet-ds recall --run {run}` first (with "
                          "--score-all to score the whole corpus).")
    if read_json(run.recall_summary)["all"]:
        return None
    return set(read_json(run.candidates))


def _scored_ids(run: RunDir) -> set[str]:
    """Ids already scored by an earlier, interrupted run, on any world size (torn last lines cut first)."""
    if dist_utils.is_main():
        for part in run.score_parts():
            warning = repair_appended(part)
            if warning:
                say(f"score: warning: {warning}")
    dist_utils.barrier()
    return {row["id"] for part in run.score_parts() for row in read_jsonl(part)}


def score_rows(ctx: BatchContext, scores: InfluenceScores, samples: list, sizes: torch.Tensor,
               per_sublayer: bool) -> list[str]:
    """This pass's rows (JSON lines): per candidate its text, `score_<b>` per batch and the total
    `score` = Σ_B |B|·I(z, B)."""
    rows = []
    for b, i in enumerate(ctx.indices):
        if i is None:
            continue
        s = samples[i]
        row = {"id": s.id, "prompt": s.prompt, "response": s.response, "meta": s.meta,
               **{f"score_{k}": v for k, v in enumerate(scores.current[b].tolist())},
               "score": float((scores.current[b].double().cpu() * sizes).sum())}
        if per_sublayer:
            row["by_sublayer"] = {n: t[b].tolist() for n, t in scores.by_sublayer.items()}
        rows.append(json.dumps(row, ensure_ascii=False))
    return rows


def _merge(run: RunDir, todo_all: list, n_batches: int, sink) -> None:
    """Rank 0: the parts merged into scores.jsonl (sorted by id, written last), the scored set and the summary."""
    rows = {r["id"]: r for p in run.score_parts() for r in read_jsonl(p)}
    ordered = [rows[k] for k in sorted(rows)]
    write_jsonl(run.scored_set, [{"id": s.id, "input_ids": e.input_ids, "loss_mask": e.loss_mask}
                                 for s, e in sorted(todo_all, key=lambda x: x[0].id)])
    summary = {"candidates": len(ordered), "batches": n_batches, "positive": sum(r["score"] > 0 for r in ordered),
               "max_abs_score": max((abs(r["score"]) for r in ordered), default=0.0), "rejects": sink.summary()}
    write_json(run.scores_summary, summary)
    write_jsonl(run.score_rows, ordered)


def run_scores(run: RunDir | str, corpus: DataSpec, args: ScoreArgs, model_dir: str, ds_config_path: str,
               overwrite: bool = False) -> dict:
    """Scores of every candidate under `run.scores`; returns its summary."""
    run = RunDir.of(run)
    dist_utils.init_distributed()
    world, rank = dist_utils.world_size(), dist_utils.rank()
    out = run.scores
    ihvps, qmeta, batches = load_ihvps(run, model_dir)
    wanted = candidate_ids(run)
    config = {"corpus": corpus.fingerprint(), "args": asdict(args), "queries": json_fingerprint(batches),
              "lancet_ds_version": __version__,
              "candidates": json_fingerprint(sorted(wanted)) if wanted is not None else "all"}
    fingerprint = json_fingerprint(config)
    if resumable(out, run.score_rows.name, fingerprint, config, overwrite, "score"):
        return read_json(run.scores_summary)
    done = _scored_ids(run)
    tokenizer = load_tokenizer(model_dir)
    sink = stage_sink(corpus.on_bad_record, out)
    todo_all = list(encode_samples(
        (s for s in corpus.samples(sink) if (wanted is None or s.id in wanted)), tokenizer, args.max_length, sink))
    todo = [(s, e) for s, e in todo_all if s.id not in done]
    if done:
        say(f"score: resuming, {len(done)} candidates already scored, {len(todo)} to go")
    sizes = torch.tensor([b["size"] for b in batches["batches"]], dtype=torch.float64)
    ds_config = load_ds_config(ds_config_path)
    engine = make_inference_engine(load_model(model_dir, ds_config), ds_config)
    points = [TapPoint(**t) for t in read_json(run.factors_index)["metadata"]["taps"]]
    device = dist_utils.device()  # IHVPs move to the device once, not per batch
    ihvps = {k: tuple(t.to(device, torch.float64) for t in v) if isinstance(v, tuple) else v.to(device, torch.float64)
             for k, v in ihvps.items()}
    ctx = BatchContext()
    scores = InfluenceScores(ctx, torch.float64, ihvps, args.per_sublayer)
    part = run.score_part(rank)
    encoded = [e for _, e in todo]

    def after(passes_done: int) -> None:
        append_lines(part, score_rows(ctx, scores, [s for s, _ in todo], sizes, args.per_sublayer))
        scores.reset()
        maybe_inject_fault(passes_done)

    run_passes(engine.module, encoded, points, scores, ctx, torch.float64, args.micro_batch, tokenizer.pad_token_id,
               "empirical", 0, after_pass=after)
    dist_utils.barrier()
    if dist_utils.is_main():
        _merge(run, todo_all, len(sizes), sink)
    dist_utils.barrier()
    say(f"score: {len(encoded)} candidates scored on {world} rank(s); {run.score_rows}")
    return read_json(run.scores_summary)
