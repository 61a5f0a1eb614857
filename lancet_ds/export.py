"""`lancet-ds export`: the corrected model as a Hugging Face checkpoint (DESIGN.md section 2).

The ZeRO-3 checkpoint kept by `correct` (tag `best` when validation chose one, else `final`) is loaded
into an engine like the one that trained it, consolidated layer by layer on rank 0, and written as
sharded safetensors with an index (`max_shard_size`), config, generation config, tokenizer, and a
model card (`README.md`) saying what was corrected, with which queries, selection and
hyperparameters."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import atomic_write_text, read_json, write_json
from lancet_ds.modeling import load_model, load_plain, load_tokenizer, make_engine, save_model
from lancet_ds.run_dir import STAGE_RECORD, RunDir


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
        + (f", step {summary['best']['step']}, query log-prob per token {summary['best']['value']:.4f}" if summary.get("best") else "")
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


def run_export(run: RunDir | str, out_dir: str | Path, args: ExportArgs, queries: DataSpec | None = None) -> Path:
    """The corrected checkpoint as a Hugging Face model directory at `out_dir` (the model card lists
    `queries` when given)."""
    run, out = RunDir.of(run), Path(out_dir)
    summary_path = run.correct_summary
    if not summary_path.exists():
        raise ConfigError(f"{summary_path}: missing. Run `lancet-ds correct --run {run}` first.")
    summary = read_json(summary_path)
    dist_utils.init_distributed()
    tag = args.tag or summary["export_tag"]
    done = read_json(run.export_record) if run.export_record.exists() else {}
    if (done.get("correct_fingerprint") == summary["fingerprint"] and done.get("tag") == tag
            and done.get("path") == str(out.resolve()) and (out / "config.json").exists()):
        say(f"export: {out} already holds checkpoint {tag} of this correction; reusing it")
        return out
    engine = make_engine(load_model(summary["model_dir"], summary["ds_config"]), summary["ds_config"])
    path, _ = engine.load_checkpoint(str(run.checkpoints), tag=tag)
    if path is None:
        raise ConfigError(f"{run.checkpoints}: no checkpoint tagged {tag!r}.")
    tokenizer = load_tokenizer(summary["model_dir"])
    save_model(engine, out, tokenizer, max_shard_size=args.max_shard_size)
    probe = torch.tensor([tokenizer("### Human: hello\n### Assistant: hi")["input_ids"]])
    engine.eval()
    with torch.no_grad():
        expected = engine.module(input_ids=probe.to(dist_utils.device())).logits.float().cpu()
    if dist_utils.is_main():
        reloaded = load_plain(out).eval()
        with torch.no_grad():
            got = reloaded(input_ids=probe).logits.float()
        diff = float((got - expected).abs().max())
        atomic_write_text(out / "README.md", model_card(run, summary, queries))
        write_json(run.export_record, {"path": str(out.resolve()), "tag": tag, "reload_max_abs_logit_diff": diff,
                                         "correct_fingerprint": summary["fingerprint"]})
        if diff > 1e-3 * float(expected.abs().max()):
            raise ConfigError(f"{out}: the exported weights do not reproduce the engine's logits "
                              f"(max |Δ| = {diff:.3g}); the checkpoint is not usable.")
    dist_utils.barrier()
    say(f"export: {out} (checkpoint {tag})")
    return out
