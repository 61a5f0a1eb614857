"""`lancet-ds fit`: LinFAC (or EK-FAC) factors over a sample of the training corpus, on a ZeRO-3-
sharded model, stored as safetensors under `RUN_DIR/factors/` (DESIGN.md sections 2–4).

1. The fitting set: `num_samples` samples drawn (seeded reservoir sampling, one streaming pass that
   also applies the bad-record policy) from the corpus; with `fit_responses=generate` the model answers
   their prompts itself (the paper's workflow), else the corpus responses are kept. Recorded in
   `factors/fit_set.jsonl` with how it was drawn, and reused on resume, or taken from another run's fit
   (`fit_set_from`) drawn the same way: EK-FAC and LinFAC then fit on the very same sequences.
2. Covariance pass: taps accumulate Eq. 11's sums (LinFAC, per sublayer) or token covariances (EK-FAC,
   per Linear) locally, checkpointed every few hundred sequences; then summed over ranks and nodes.
3. Eigendecompositions, spread round-robin over ranks (sublayer k on rank k mod world size).
4. Eigenvalue correction (always for EK-FAC, `eigen_correction` for LinFAC): a second pass.
5. Each rank writes the shard of the sublayers it owns; rank 0 writes `index.json`.
A finished fit with the same resolved options is reused; different options are refused unless
`overwrite`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Literal
from pathlib import Path

import torch
import torch.distributed as dist

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import RejectSink, nothing_usable, stage_sink
from lancet_ds.data.corpus import encode_samples, read_encoded
from lancet_ds.data.encoding import prompt_and_response_ids
from lancet_ds.data.records import EncodedSample, Sample
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import BadInputError, ConfigError
from lancet_ds.faults import maybe_inject_fault
from lancet_ds.fileio import read_json, write_json, write_jsonl
from lancet_ds.influence import capacity, partial
from lancet_ds.influence.covariance import BatchContext, EigenCorrectionSums, LinfacSums, TokenCovarianceSums
from lancet_ds.influence.eigen import DEFAULT_DAMPING_FACTOR, eigendecompose
from lancet_ds.influence.factor_store import save_shard, shard_name, write_index
from lancet_ds.fingerprint import model_files_fingerprint, model_fingerprint
from lancet_ds.influence.generate import generate_responses
from lancet_ds.influence.memory import Peak, budget_problems, parse_bytes, tensor_bytes
from lancet_ds.influence.passes import run_passes
from lancet_ds.influence.sublayers import Sublayer, discover
from lancet_ds.influence.taps import TapPoint
from lancet_ds.options import at_least, positive, recorded
from lancet_ds.run_dir import SHARD_INDEX, RunDir
from lancet_ds.sampling import reservoir
from lancet_ds.stage_guard import finished, record, stage_fingerprint
from lancet_ds.modeling import check_model_dir, load_ds_config, load_model, load_tokenizer, make_inference_engine, releases_engines, zero_stage

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class FitArgs:
    """Options of the factor fit."""

    method: Literal["linfac", "ekfac"] = "linfac"
    """linfac (sublayer-level factors, Eq. 11) or ekfac (per-Linear token covariances)."""
    fisher: Literal["sampled", "empirical"] = "sampled"
    """sampled: labels drawn from the model's predictive distribution; empirical: dataset labels."""
    fit_responses: Literal["generate", "corpus"] = "generate"
    """generate: the model answers the sampled prompts (the paper's workflow); corpus: keep the corpus responses."""
    num_samples: int = 1000
    """Fitting sequences drawn from the corpus (all of them when the corpus is smaller)."""
    seed: int = 0
    """Seed of the draw, the Fisher labels and the generations."""
    dtype: Literal["float32", "float64"] = "float32"
    """Accumulation dtype of the sums: float32 or float64 (eigendecompositions are always float64)."""
    eigen_correction: bool = False
    """LinFAC: replace λ_S λ_Aᵀ by the corrected diagonal Λ̂ (a second pass). EK-FAC always corrects."""
    attention: bool = False
    """Also treat attention blocks as sublayers."""
    sublayer_patterns: list[str] = field(default_factory=list)
    """Module-name patterns (REGEX or 'IN_REGEX -> OUT_REGEX') for architectures without defaults."""
    micro_batch: int = 8
    """Sequences per rank per pass."""
    max_length: int = 512
    """Tokens per fitting sequence (prompt + response), right-truncated."""
    max_new_tokens: int = 128
    """generate: the longest generated response."""
    checkpoint_every: int = 256
    """Checkpoint the running sums about every this many sequences."""
    memory_budget: str | None = None
    """Per-rank memory for the weights shard, activations and factors (e.g. 70GB): the passes run over as many
    partitions of sublayers as needed to fit it; refused before any work when nothing fits. Default: one
    partition, no check."""
    factors_on: Literal["device", "cpu"] = "device"
    """Where the running sums and the owned factors live: device, or cpu (host memory). With cpu, each
    micro-batch's contribution is computed on the device one sublayer at a time and added into host sums;
    reductions and eigendecompositions move one tensor at a time to the device. The device then holds no
    factor tensor but the one in flight (and the EK-FAC correction's bases), at the cost of a host transfer
    per sublayer and micro-batch. The factors are the same either way."""
    fit_set_from: str | None = None
    """A run directory whose fit recorded its fit set: use those sequences (no new draw, no generation) when
    they were drawn the same way (model, corpus, num_samples, seed, fit_responses, lengths), e.g. an EK-FAC
    fit on LinFAC's sequences; refused when drawn otherwise. The factors are the same as with a new draw."""

    @property
    def corrected(self) -> bool:
        """Whether the fit ends with the eigenvalue-corrected diagonal Λ̂ (always for EK-FAC)."""
        return self.method == "ekfac" or self.eigen_correction

    def validate(self) -> list[str]:
        return (positive(self, "num_samples", "micro_batch", "max_new_tokens", "checkpoint_every")
                + at_least(self, "max_length", 2) + budget_problems(self.memory_budget))


def tap_points(sublayers: list[Sublayer], method: str) -> list[TapPoint]:
    if method == "linfac":
        return [TapPoint(s.name, s.input_module, s.output_module) for s in sublayers]
    if method == "ekfac":
        return [TapPoint(l, l, l) for s in sublayers for l in s.linears]
    raise ConfigError(f"method must be linfac or ekfac, got {method!r}")


NOT_FINGERPRINTED = ("fit_set_from", "factors_on")
"""FitArgs that do not change the factors (a borrowed fit set is refused unless drawn as this fit would;
where the sums live changes no number): a killed fit may resume with either."""


def fit_set_draw(args: FitArgs, model_fp: str, corpus_fp: dict) -> dict:
    """What decides the fitting set's sequences: the model, the corpus, the draw, the lengths and, when the
    model generates the responses, its generation settings (the micro-batch pads the batched prompts)."""
    draw = {"model_fingerprint": model_fp, "corpus": corpus_fp, "fit_responses": args.fit_responses,
            "num_samples": args.num_samples, "seed": args.seed, "max_length": args.max_length}
    if args.fit_responses == "generate":
        draw.update(max_new_tokens=args.max_new_tokens, micro_batch=args.micro_batch)
    return draw


def draw_identity(draw: dict) -> dict:
    """`draw` without the corpus's path: the sequences depend on the corpus's contents (its sha256) and how it is
    read, not on where it lies, so a corpus copied or moved (a scheduled job's scratch copy) draws the same set."""
    return {**draw, "corpus": {k: v for k, v in draw.get("corpus", {}).items() if k != "path"}}


def recorded_draw(fit_set_path: Path) -> dict | None:
    """How a recorded fitting set was drawn (`fit_set_draw`), or None where none is recorded (or an older
    lancet_ds recorded it without its draw)."""
    meta_path = fit_set_path.with_suffix(".meta.json")
    return read_json(meta_path).get("draw") if fit_set_path.exists() and meta_path.exists() else None


def _same_draw(recorded: dict | None, draw: dict) -> bool:
    return recorded is not None and draw_identity(recorded) == draw_identity(draw)


def _reuse_fit_set(fit_set_path: Path, draw: dict) -> list[EncodedSample] | None:
    """The recorded fitting set when it was drawn as this fit draws (a resumed or rerun fit), else None. Rank 0
    looks and tells the others: a rank that looked for itself could find a set rank 0 has just borrowed in."""
    if dist_utils.on_rank0(lambda: _same_draw(recorded_draw(fit_set_path), draw)):
        say(f"fit set: reusing {fit_set_path}")
        return read_encoded(fit_set_path)
    return None


def _borrow_fit_set(source: str, fit_set_path: Path, draw: dict) -> list[EncodedSample]:
    """`fit_set_from`'s fitting set, copied into this run (so it resumes on its own), or a ConfigError
    naming what was drawn otherwise."""
    src = RunDir.of(source).fit_set
    recorded = recorded_draw(src)
    if recorded is None:
        raise ConfigError(f"fit_set_from {source}: no recorded fit set at {src} (a fit of lancet_ds "
                          f"{__version__} writes one). Run that fit first, or leave fit_set_from unset.")
    there, here = draw_identity(recorded), draw_identity(draw)
    if there != here:
        changed = ", ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here"
                            for k in sorted(set(here) | set(there)) if there.get(k) != here.get(k))
        raise ConfigError(f"fit_set_from {source}: its fit set was drawn otherwise ({changed}). Fit with the same "
                          "options, or leave fit_set_from unset to draw anew.")
    if dist_utils.is_main():
        fit_set_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, fit_set_path)
        shutil.copyfile(src.with_suffix(".meta.json"), fit_set_path.with_suffix(".meta.json"))
    dist_utils.barrier()
    borrowed = read_encoded(src)
    say(f"fit set: the {len(borrowed)} sequences of {src}")
    return borrowed


def _build_fit_set(args: FitArgs, chosen: list[Sample], tokenizer, module, synced: bool, sink: RejectSink,
                   fit_set_path: Path, draw: dict) -> list[EncodedSample]:
    """Encode the drawn samples (generating their responses in `generate` mode) and record them."""
    if args.fit_responses == "corpus":
        encoded = [e for _, e in encode_samples(chosen, tokenizer, args.max_length, sink)]
        rows = [{"id": e.id, "input_ids": e.input_ids, "loss_mask": e.loss_mask} for e in encoded]
    else:
        prompts = [prompt_and_response_ids(tokenizer, s.prompt, "x")[0][: args.max_length - 1] for s in chosen]
        say(f"fit set: generating responses to {len(prompts)} prompts (up to {args.max_new_tokens} tokens each)")
        answers = generate_responses(module, tokenizer, prompts, args.micro_batch, args.max_new_tokens, args.seed, synced,
                                     label="fit: generating responses")
        rows, encoded = [], []
        for s, p, r in zip(chosen, prompts, answers):
            r = (r or [tokenizer.eos_token_id])[: args.max_length - len(p)]
            e = EncodedSample(s.id, p + r, [0] * len(p) + [1] * len(r))
            encoded.append(e)
            rows.append({"id": e.id, "input_ids": e.input_ids, "loss_mask": e.loss_mask,
                         "generated_response": tokenizer.decode(r, skip_special_tokens=True)})
    if dist_utils.is_main():
        write_jsonl(fit_set_path, rows)
        write_json(fit_set_path.with_suffix(".meta.json"), {"draw": draw, "sequences": len(rows)})
    dist_utils.barrier()
    return encoded


def _reduce_to_owners(sums: dict[str, dict[str, torch.Tensor]], group: list[int], names: list[str],
                      world: int) -> None:
    """Each point's sums summed over ranks into its owner (k mod W); the other ranks drop theirs."""
    for k in group:
        for key in sorted(sums[names[k]]):
            dist_utils.reduce_sum(sums[names[k]][key], dist_utils.owner(k, world))
        if dist_utils.owner(k, world) != dist_utils.rank():
            del sums[names[k]]


def _phase(name: str, g: int, groups: list) -> str:
    return name if len(groups) == 1 else f"{name}{g:03d}"


def _pass(phase: str, module, fit_set, points, consumer, ctx, dtype, args: FitArgs, pad_id, partial_dir: Path,
          fingerprint: str, observe, save_at_end: bool) -> float:
    """One resumable pass over the fitting set; returns its wall time. `observe()` runs after every pass
    (the memory peak); with `save_at_end` the finished sums are checkpointed too (one of several partitions)."""
    world = dist_utils.world_size()
    start = partial.latest(partial_dir, phase, world, fingerprint)
    if start:
        consumer.sums = partial.load(partial_dir, phase, start, consumer.home)
        say(f"{phase} pass: resuming after pass {start}")
    every = max(1, args.checkpoint_every // (args.micro_batch * world))
    total = dist_utils.num_passes(len(fit_set), args.micro_batch, world)

    def after(done: int) -> None:
        observe()
        if (done % every == 0 and done < total) or (save_at_end and done == total):
            partial.save(partial_dir, phase, done, consumer.sums, fingerprint)
        maybe_inject_fault(done)

    t0 = time.perf_counter()
    run_passes(module, fit_set, points, consumer, ctx, dtype, args.micro_batch, pad_id, args.fisher, args.seed,
               start=start, after_pass=after, label=f"fit: {phase} pass")
    observe()
    return time.perf_counter() - t0


def compute_factors(module, fit_set: list[EncodedSample], points: list[TapPoint], args: FitArgs, pad_id: int,
                    partial_dir: Path, fingerprint: str, schedule: dict | None = None,
                    peak: Peak | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """The factors of the tap points this rank owns (k mod W): the normalised A and S, their
    eigendecompositions, and Λ̂ when corrected. `schedule` (`capacity.fit_schedule`) splits the passes into
    partitions of points (one of all points by default). Works on a plain module in one process too."""
    world = dist_utils.world_size()
    dtype = DTYPES[args.dtype]
    names = [p.name for p in points]
    corrected = args.corrected
    schedule = schedule or capacity.fit_schedule(capacity.points_of(module, points), world, args.dtype, corrected)
    peak = peak or Peak()
    n, tokens = len(fit_set), sum(len(e.input_ids) for e in fit_set)
    denom = n if args.method == "linfac" else tokens
    ctx = BatchContext()
    home = torch.device("cpu") if args.factors_on == "cpu" else None  # None: where the batches are
    factors: dict[str, dict[str, torch.Tensor]] = {}
    seconds = 0.0
    groups = schedule["covariance_groups"]
    for g, group in enumerate(groups):
        consumer = (LinfacSums if args.method == "linfac" else TokenCovarianceSums)(ctx, dtype, home)
        seconds += _pass(_phase("covariance", g, groups), module, fit_set, [points[k] for k in group], consumer, ctx,
                         dtype, args, pad_id, partial_dir, fingerprint, lambda: peak.observe(factors, consumer.sums),
                         len(groups) > 1)
        _reduce_to_owners(consumer.sums, group, names, world)
        for name, sums in consumer.sums.items():
            factors[name] = {"A": sums["A"].div_(denom), "S": sums["S"].div_(denom)}
        del consumer
    say(f"covariance pass: {seconds:.1f}s, {tokens * len(groups) / seconds:.0f} tokens/s"
        + (f" over {len(groups)} partitions" if len(groups) > 1 else ""))

    t0 = time.perf_counter()
    for f in factors.values():  # on the device, one factor at a time; the results go where the factor lives
        for side in ("A", "S"):
            q, lam = eigendecompose(f[side].to(dist_utils.device()))
            f["Q" + side], f["L" + side] = q.to(f[side].device), lam.to(f[side].device)
    peak.observe(factors)
    eigen_seconds = time.perf_counter() - t0

    correction_seconds = 0.0
    if corrected:
        groups = schedule["correction_groups"]
        for g, group in enumerate(groups):
            bases = _broadcast_bases(factors, group, names, schedule["dims"], world)
            lam = EigenCorrectionSums(ctx, dtype, bases, home)
            borrowed = {k: v for k, v in bases.items() if k not in factors}
            correction_seconds += _pass(
                _phase("correction", g, groups), module, fit_set, [points[k] for k in group], lam, ctx, dtype, args,
                pad_id, partial_dir, fingerprint, lambda: peak.observe(factors, borrowed, lam.sums, lam.casts()),
                len(groups) > 1)
            _reduce_to_owners(lam.sums, group, names, world)
            for name, sums in lam.sums.items():
                factors[name]["Lambda"] = sums["Lambda"].div_(n)
            del bases, borrowed, lam
    timings = {"covariance_pass_seconds": round(seconds, 3), "eigendecomposition_seconds": round(eigen_seconds, 3),
               "correction_pass_seconds": round(correction_seconds, 3), "tokens_per_second": round(tokens / seconds, 1)}
    return factors, timings


def _broadcast_bases(factors: dict, group: list[int], names: list[str], dims: list[tuple[int, int]],
                     world: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every point of `group`'s eigenbases (Q_A, Q_S) on every rank, sent by its owner."""
    bases = {}
    for k in group:
        name, src = names[k], dist_utils.owner(k, world)
        if name in factors:  # the owner's own (host-resident ones copied to the device, as the pass needs them)
            qa, qs = factors[name]["QA"].to(dist_utils.device()), factors[name]["QS"].to(dist_utils.device())
        else:
            p, m = dims[k]
            qa = torch.empty((m, m), dtype=torch.float64, device=dist_utils.device())
            qs = torch.empty((p, p), dtype=torch.float64, device=dist_utils.device())
        if world > 1:
            dist.broadcast(qa, src=src)
            dist.broadcast(qs, src=src)
        bases[name] = (qa, qs)
    return bases


@releases_engines
def fit_factors(run: RunDir | str, corpus: DataSpec, args: FitArgs, model_dir: str, ds_config_path: str,
                overwrite: bool = False) -> dict:
    """Fit and store the factors under `run.factors`; returns the index metadata (with timings)."""
    check_model_dir(model_dir)
    dist_utils.init_distributed()
    world, rank = dist_utils.world_size(), dist_utils.rank()
    run = RunDir.of(run)
    out = run.factors
    config = {"args": {k: v for k, v in recorded(args).items() if k not in NOT_FINGERPRINTED},
              "model_fingerprint": model_fingerprint(model_dir),
              "model_dir": str(Path(model_dir).resolve()), "corpus": corpus.fingerprint(),
              "lancet_ds_version": __version__, "model_files": model_files_fingerprint(model_dir)}
    fingerprint = stage_fingerprint(out, config, inputs=(corpus.path, model_dir), since=("model_files",))
    if finished(out, SHARD_INDEX, fingerprint, overwrite, "fit", config):
        return read_json(run.factors_index)["metadata"]
    out.mkdir(parents=True, exist_ok=True)
    ds_config = load_ds_config(ds_config_path)
    tokenizer = load_tokenizer(model_dir)
    sink = stage_sink(corpus.on_bad_record, out)
    draw = fit_set_draw(args, config["model_fingerprint"], config["corpus"])
    fit_set = _reuse_fit_set(run.fit_set, draw)
    if fit_set is None and args.fit_set_from:
        fit_set = _borrow_fit_set(args.fit_set_from, run.fit_set, draw)
    chosen = None
    if fit_set is None:  # read the whole corpus (bad records fail here) before loading the model
        chosen = reservoir(corpus.samples(sink), args.num_samples, args.seed)
    engine = make_inference_engine(load_model(model_dir, ds_config), ds_config)
    module = engine.module
    sublayers = discover(module, args.sublayer_patterns or None, args.attention)
    points = tap_points(sublayers, args.method)
    names = [p.name for p in points]
    if chosen is not None:
        synced = world > 1 and zero_stage(ds_config) == 3
        fit_set = _build_fit_set(args, chosen, tokenizer, module, synced, sink, run.fit_set, draw)
    if not fit_set:
        raise BadInputError(nothing_usable(corpus.path, "fitting sequence", out))
    n = len(fit_set)
    tokens = sum(len(e.input_ids) for e in fit_set)
    partial_dir = run.fit_partial
    say(f"fit: {args.method} over {len(sublayers)} sublayers ({len(points)} tap points), {n} sequences, "
        f"{tokens} tokens, fisher={args.fisher}, {world} rank(s)")
    corrected = args.corrected
    shapes = capacity.points_of(module, points)
    schedule = capacity.fit_schedule(shapes, world, args.dtype, corrected, parse_bytes(args.memory_budget),
                                     capacity.stage_fixed_bytes(module, shapes, ds_config, args.micro_batch,
                                                                args.max_length), args.factors_on)
    peak = Peak()
    factors, timings = compute_factors(module, fit_set, points, args, tokenizer.pad_token_id, partial_dir, fingerprint,
                                       schedule, peak)
    metadata = {"model_fingerprint": config["model_fingerprint"], "sublayers": names, "method": args.method,
                "parent_sublayers": {s.name: list(s.linears) if args.method == "ekfac" else [s.name] for s in sublayers},
                "taps": [asdict(p) for p in points], "fisher": args.fisher, "fit_responses": args.fit_responses,
                "damping": {"rule": "factor * mean(curvature diagonal)", "factor": DEFAULT_DAMPING_FACTOR},
                "eigen_correction": corrected, "num_sequences": n, "num_tokens": tokens, "dtype": args.dtype,
                "eigen_dtype": "float64", "lancet_ds_version": __version__, "world_size": world, "seed": args.seed,
                "memory": {"budget_bytes": parse_bytes(args.memory_budget),
                           "covariance_partitions": len(schedule["covariance_groups"]),
                           "correction_partitions": len(schedule["correction_groups"]),
                           "peak_bytes_per_rank": dist_utils.all_gather_object(peak.bytes),
                           "owned_bytes_per_rank": dist_utils.all_gather_object(tensor_bytes(factors)),
                           "predicted_peak_bytes_per_rank": schedule["peak_bytes"], "factors_on": args.factors_on,
                           **({"predicted_host_peak_bytes_per_rank": schedule["host_peak_bytes"]}
                              if "host_peak_bytes" in schedule else {})}}
    mine = {f"{name}.{key}": t for name, f in factors.items() for key, t in f.items()}
    if mine:
        save_shard(out, rank, world, mine, metadata)
    keys = ("A", "S", "QA", "LA", "QS", "LS") + (("Lambda",) if corrected else ())
    weight_map = {f"{name}.{key}": shard_name(dist_utils.owner(k, world), world) for k, name in enumerate(names) for key in keys}
    record(out, fingerprint, config, timings=timings)
    dist_utils.barrier()
    if dist_utils.is_main():
        write_index(out, weight_map, metadata)  # the marker of a finished fit: written last
        shutil.rmtree(partial_dir, ignore_errors=True)
    dist_utils.barrier()
    say(f"factors written to {out} ({len(set(weight_map.values()))} shard(s))")
    return {**metadata, "timings": timings}
