"""`lancet-ds export`: the corrected model as a Hugging Face checkpoint (DESIGN.md section 2).

The ZeRO checkpoint kept by `correct` (tag `best` when validation chose one, else `final`) is loaded into
an engine like the one that trained it and consolidated layer by layer on rank 0 when the world size is
the one that wrote it; on any other world size rank 0 consolidates the fp32 weights from the files
(DeepSpeed's zero_to_fp32). Either way it is written as sharded safetensors with an index (`max_shard_size`), config, generation config, tokenizer, and a
model card (`README.md`) saying what was corrected, with which queries, selection and
hyperparameters."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.spec import DataSpec
from lancet_ds.checkpoint_io import fp32_weights, load_weights, model_dtype, saved_world_size
from lancet_ds.data.corpus import read_encoded
from lancet_ds.errors import ConfigError, LancetError
from lancet_ds.fileio import atomic_write_text, read_json, write_json
from lancet_ds.fingerprint import model_fingerprint
from lancet_ds.logprobs import response_logprobs
from lancet_ds.modeling import load_model, load_plain, load_tokenizer, make_engine, releases_engines, save_model
from lancet_ds.run_dir import STAGE_RECORD, RunDir


EXPORT_MARK = "lancet_export.json"
"""Inside an exported directory: which run, correction and checkpoint it holds (an earlier export of the same
run may be replaced; anything else only with --overwrite)."""


@dataclass
class ExportArgs:
    """Options of the export."""

    max_shard_size: str = "2GB"
    """Largest safetensors shard (Hugging Face's notation: 500MB, 2GB, ...)."""
    tag: str | None = None
    """Checkpoint tag to export (default: `best` when validation chose one, else `final`)."""

    def validate(self) -> list[str]:
        if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", self.max_shard_size.strip(), flags=re.IGNORECASE):
            return [f"max_shard_size: write a size such as 500MB or 2GB, got {self.max_shard_size!r}"]
        return []


def model_card(run: RunDir, summary: dict, queries: DataSpec | None) -> str:
    record = run.correct / STAGE_RECORD
    args = read_json(record)["config"]["args"] if record.exists() else {}
    batches = read_json(run.batches)["batches"]
    queries = {s.id: {"prompt": s.prompt, "response": s.response} for s in queries.samples(RejectSink("skip"))} \
        if queries is not None else {}
    sel = summary["selection"]
    lines = [
        "# Corrected with lancet_ds",
        "",
        f"Base model: `{summary['model_dir']}`. Post-trained with **{summary['method'].upper()}** "
        f"({summary['steps']} steps; exported checkpoint: `{summary['export_tag']}`"
        + (f", step {summary['best']['step']}, chosen on validation data by {summary['best'].get('criterion', 'logprob')}"
           f" = {summary['best']['value']:.4f}" if summary.get("best") else "")
        + ") to lower the probability of the undesirable responses below, using the training samples that LinFAC "
        "influence scores found to cause (D⁺) and to suppress (D⁻) them.",
        "",
        f"Selection: {sel['positive']} positive, {sel['negative']} negative, {sel['neutral']} neutral and "
        f"{sel['replay']} replay samples (max |I| = {sel['max_abs_score']:.4g}).",
        "",
        "Hyperparameters: " + ", ".join(f"{k}={v}" for k, v in sorted(args.items())),
        "",
        f"## Influence queries ({sum(b['size'] for b in batches)} in {len(batches)} batches)",
        "",
    ]
    for b in batches:
        for qid in b["query_ids"]:
            q = queries.get(qid)
            lines.append(f"- batch {b['batch']}, `{qid}`" + (f": {q.get('prompt', '')!r} → {q.get('response', '')!r}" if q else ""))
    return "\n".join(lines) + "\n"


@releases_engines
def run_export(run: RunDir | str, out_dir: str | Path, args: ExportArgs, queries: DataSpec | None = None,
               overwrite: bool = False, model_dir: str | None = None) -> Path:
    """The corrected checkpoint as a Hugging Face model directory at `out_dir` (the model card lists
    `queries` when given), on any world size. Written to `OUT.partial`, verified, then moved into place;
    `export.json` is recorded last, so a failed check records nothing. `out_dir` may be new, empty, or an
    earlier export of this run; anything else needs `overwrite`. The model's configuration and tokenizer come
    from `model_dir` (the job's model, where it lies now) or else from where the correction found them."""
    run, out = RunDir.of(run), Path(out_dir)
    if not run.correct_summary.exists():
        raise ConfigError(f"{run.correct_summary}: missing. Run `lancet-ds correct --run {run}` first.")
    summary = read_json(run.correct_summary)
    dist_utils.init_distributed()
    moved = model_dir is not None and Path(model_dir).resolve() != Path(summary["model_dir"]).resolve()
    summary["model_dir"] = model_dir or summary["model_dir"]
    if not Path(summary["model_dir"]).is_dir():
        raise ConfigError(f"{run.correct_summary}: the model the correction started from, {summary['model_dir']}, "
                          "is gone (moved?). Pass --model with where it lies now (a job passes its own `model`).")
    started = read_json(run.correct / STAGE_RECORD)["config"]["model"] if (run.correct / STAGE_RECORD).exists() else None
    if moved and started and dist_utils.on_rank0(lambda: model_fingerprint(model_dir)) != started:
        raise ConfigError(f"--model {model_dir}: not the model the correction in {run.correct} started from (its weights "
                          "differ). Pass that model, or run the correction again on this one.")
    tag = args.tag or summary["export_tag"]
    done = relocated(read_json(out / EXPORT_MARK), run) if (out / EXPORT_MARK).exists() else {}
    if (done.get("correct_fingerprint") == summary["fingerprint"] and done.get("tag") == tag
            and done.get("run") == str(run.root.resolve()) and (out / "config.json").exists()):
        if dist_utils.is_main():
            write_json(run.export_record, done)  # this directory is the run's export again
        dist_utils.barrier()
        say(f"export: {out} already holds checkpoint {tag} of this correction; reusing it")
        return out
    folder = run.checkpoints / tag
    if not folder.is_dir():
        raise ConfigError(f"{run.checkpoints}: no checkpoint tagged {tag!r} (have: "
                          f"{sorted(p.name for p in run.checkpoints.iterdir() if p.is_dir()) if run.checkpoints.exists() else []}).")
    dist_utils.on_rank0(lambda: _check_destination(run, out, done, overwrite))
    staging = out.with_name(out.name + ".partial")
    written = dist_utils.on_rank0(lambda: saved_world_size(folder))
    expected = _save_through_engine(summary, run, tag, staging, args) if written == dist_utils.world_size() else None
    record = dist_utils.on_rank0(lambda: _verify_and_publish(run, summary, tag, out, staging, args, queries, expected,
                                                             written))
    say(f"export: {out} (checkpoint {tag}, written by {written} rank(s), consolidated {record['consolidation']})")
    return out


def relocated(record: dict, run: RunDir) -> dict:
    """An export record as seen from where `run` lies now: a run directory moved or copied since the export
    took its export along when that lay inside it (the default `model/`), so the record's paths follow. An
    export elsewhere keeps its record, and so stays another run's until `--overwrite`."""
    root = str(run.root.resolve())
    if record.get("run") in (None, root):
        return record
    old, path = Path(record["run"]), Path(record["path"])
    if old not in path.parents:
        return record
    return {**record, "path": str(Path(root) / path.relative_to(old)), "run": root}


def exported(run: RunDir) -> dict | None:
    """The run's record of its finished export (`relocated`), or None before any export."""
    return relocated(read_json(run.export_record), run) if run.export_record.exists() else None


def _check_destination(run: RunDir, out: Path, done: dict, overwrite: bool) -> None:
    """Refuse to replace what this export was not pointed at: a non-empty directory that is not an earlier
    export of this run (unless `overwrite`), and never the run directory itself or one that holds it."""
    root = run.root.resolve()
    if out.resolve() == root or out.resolve() in root.parents:
        raise ConfigError(f"export --out {out}: that is (or holds) the run directory {run}; choose another --out.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        earlier = done.get("run") == str(root)  # `done`: the export record found in OUT
        if not (earlier or overwrite):
            raise ConfigError(f"export --out {out}: exists and is not an earlier export of this run; it would be "
                              "replaced. Choose another --out, or pass --overwrite (--force in a job) to replace it.")


def _save_through_engine(summary: dict, run: RunDir, tag: str, staging: Path, args: ExportArgs) -> torch.Tensor | None:
    """Same world size as the checkpoint: load it into an engine like the one that trained it and
    consolidate layer by layer (collective). Returns the engine's logits on the probe (rank 0)."""
    engine = make_engine(load_model(summary["model_dir"], summary["ds_config"]), summary["ds_config"])
    engine.load_checkpoint(str(run.checkpoints), tag=tag)
    tokenizer = load_tokenizer(summary["model_dir"])
    save_model(engine, staging, tokenizer, max_shard_size=args.max_shard_size)
    engine.eval()
    with torch.no_grad():
        logits = engine.module(input_ids=_probe(tokenizer).to(dist_utils.device())).logits.float().cpu()
    return logits if dist_utils.is_main() else None


def _save_from_files(summary: dict, run: RunDir, tag: str, staging: Path, args: ExportArgs) -> torch.Tensor:
    """Another world size: DeepSpeed's zero_to_fp32 consolidation, in this process alone. Returns the
    consolidated model's logits on the probe."""
    model = load_plain(summary["model_dir"], dtype=model_dtype(summary["ds_config"])).eval()
    load_weights(model, fp32_weights(run.checkpoints, tag), f"{run.checkpoints / tag}")
    tokenizer = load_tokenizer(summary["model_dir"])
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True, max_shard_size=args.max_shard_size)
    tokenizer.save_pretrained(str(staging))
    with torch.no_grad():
        return model(input_ids=_probe(tokenizer)).logits.float()


def _verify_and_publish(run: RunDir, summary: dict, tag: str, out: Path, staging: Path, args: ExportArgs,
                        queries: DataSpec | None, expected: torch.Tensor | None, written: int) -> dict:
    """Rank 0: reload the staged checkpoint with `from_pretrained`, check it reproduces the consolidated
    model's logits and (for `best`) the query log-prob validation measured at that step, then move it into
    place and record it. A failed check leaves `out` and `export.json` as they were."""
    how = "through the engine" if expected is not None else f"from the files ({written} → {dist_utils.world_size()} ranks)"
    if expected is None:
        expected = _save_from_files(summary, run, tag, staging, args)
    tokenizer = load_tokenizer(summary["model_dir"])
    reloaded = load_plain(staging).eval()
    with torch.no_grad():
        got = reloaded(input_ids=_probe(tokenizer)).logits.float()
    diff = float((got - expected).abs().max())
    checks = {"reload_max_abs_logit_diff": diff}
    if diff > 1e-3 * float(expected.abs().max()):
        shutil.rmtree(staging, ignore_errors=True)
        raise LancetError(f"{out}: the exported weights do not reproduce the consolidated model's logits (max |Δ| = "
                          f"{diff:.3g}); nothing was written. Rerun the export; if it persists, the checkpoint is damaged.")
    best = summary.get("best") or {}
    if tag == "best" and "query_logprob_per_token" in best:
        s, c = response_logprobs(reloaded, read_encoded(run.query_set), tokenizer.pad_token_id, alone=True)
        got, then = float(s.sum() / c.sum()), best["query_logprob_per_token"]
        checks.update(query_logprob_per_token=got, query_logprob_at_validation=then)
        if abs(got - then) > 1e-3 * max(1.0, abs(then)):
            shutil.rmtree(staging, ignore_errors=True)
            raise LancetError(f"{out}: the exported model's query log-prob per token {got:.5f} differs from "
                              f"{then:.5f} measured at step {best['step']}; nothing was written.")
    atomic_write_text(staging / "README.md", model_card(run, summary, queries))
    record = {"path": str(out.resolve()), "run": str(run.root.resolve()), "tag": tag,
              "correct_fingerprint": summary["fingerprint"], "checkpoint_world_size": written, "consolidation": how,
              **checks}
    write_json(staging / EXPORT_MARK, record)
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    staging.rename(out)
    write_json(run.export_record, record)  # the run's record of a finished export: written last
    return record


def _probe(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer("### Human: hello\n### Assistant: hi")["input_ids"]])
