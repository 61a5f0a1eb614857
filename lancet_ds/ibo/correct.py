"""`lancet-ds correct`: post-train the impure model on its influential samples (DESIGN.md section 3).

1. Selection (Eq. 14) from `RUN_DIR/scores/`: D⁺_B, D⁻_B per query batch and the neutral set, plus a
   replay sample of the training corpus; written to `RUN_DIR/selection.jsonl` (`id`, `role`, `batch`,
   `score` = Ĩ).
2. Reference log-probs from the frozen, CPU-offloaded reference engine, cached (`ibo.reference`).
3. Training of the policy engine (ZeRO-3), one optimizer step per iteration:
   * `ibo`: L_BD(neutral tokens) + L_COR(pairs drawn within a batch) + proximity (Eq. 17);
   * `pbo`: L_BD(neutral) − NLL(D⁺) + proximity (Bae et al. 2022, Eq. 4);
   * `ga`:  −NLL(D⁺).
   Pairs and neutral samples are drawn per step from a seeded generator (the same on every rank) and
   dealt over ranks; each term is normalised by its global count, so the update does not depend on
   the world size. θ_ref's proximity gradient is added to the local gradient partitions. Each term is
   logged to `RUN_DIR/correct/log.jsonl`; checkpoints every `save_every` steps, resumed on rerun.
   With `validate_every`, the mean per-token log-prob of the query responses is measured (from step 0)
   and the lowest is kept as checkpoint `best` — with `validate_clean`, only among checkpoints whose
   clean perplexity stays within `max_ppl_increase` of step 0's; `patience` stops early.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import RejectSink, stage_sink
from lancet_ds.data.corpus import iter_samples, load_encoded
from lancet_ds.data.encoding import collate, encode_sample, padding_sample
from lancet_ds.data.records import EncodedSample, Sample
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.errors import ConfigError
from lancet_ds.faults import maybe_inject_fault
from lancet_ds.fileio import read_json, read_jsonl, write_json, write_jsonl
from lancet_ds.ibo.losses import bregman_loss, correction_loss, nll
from lancet_ds.ibo.proximity import ReferencePartitions
from lancet_ds.ibo.reference import reference_logprobs
from lancet_ds.ibo.selection import Selection, select
from lancet_ds.fingerprint import json_fingerprint, model_fingerprint
from lancet_ds.sampling import reservoir
from lancet_ds.influence.queries import fitted_model_dir
from lancet_ds.logprobs import response_logprobs
from lancet_ds.losses import token_logprobs
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_engine
from lancet_ds.stage_guard import resumable

METHODS = ("ibo", "pbo", "ga")


@dataclass
class CorrectArgs:
    """Options of the post-training (defaults: the paper's Appendix D.2 batch sizes)."""

    method: str = "ibo"
    """ibo (L_BD + L_COR + proximity), pbo (L_BD − NLL(D⁺) + proximity) or ga (−NLL(D⁺))."""
    selection: str = "topk"
    """topk or pareto."""
    k: int = 16
    """topk: samples per side and query batch."""
    pareto_mass: float = 0.8
    """pareto: share of each side's total |Ĩ| the selected samples carry."""
    replay: int = 64
    """Training samples drawn from the corpus into the neutral set."""
    epsilon: float = -1.0
    """ε of L_COR: −1 corrects, +1 reinforces."""
    cor_form: str = "dpo"
    """dpo: −log σ(ε·u) (bounded); paper: −ε·log σ(u) as printed."""
    lam_prox: float = 1e-3
    """λ of the proximity term."""
    lr: float = 1e-5
    """Learning rate (constant), the paper's 1e-5; small models need more."""
    steps: int = 4000
    """Optimizer steps (the paper's 4000)."""
    pair_batch: int = 8
    """Correction pairs per step (the paper's 8)."""
    neutral_batch: int = 24
    """Neutral samples per step for L_BD (the paper's 24)."""
    seed: int = 0
    """Seed of the replay draw and of the per-step pair / neutral draws."""
    save_every: int = 100
    """Checkpoint every N steps (resume point)."""
    validate_every: int = 0
    """Measure the query log-prob every N steps and keep the best checkpoint (0: off)."""
    validate_clean: str | None = None
    """Held-out clean samples: a checkpoint counts as best only while its perplexity on them stays within
    `max_ppl_increase` of the model's before post-training (the utility guard)."""
    max_ppl_increase: float = 0.05
    """Allowed relative rise of the clean perplexity for a best checkpoint."""
    patience: int = 0
    """Stop after this many validations without improvement (0: never)."""
    max_length: int = 512
    """Tokens per sample (right-truncated)."""


def _scores_config(run: Path) -> dict:
    cfg = run / "scores" / "stage_config.json"
    if not (run / "scores" / "scores.jsonl").exists() or not cfg.exists():
        raise ConfigError(f"{run}/scores/scores.jsonl: missing. Run `lancet-ds score --run {run}` first.")
    return read_json(cfg)["config"]


def build_selection(run: Path, args: CorrectArgs) -> tuple[Selection, list[dict], list[Sample]]:
    """The selection, the scored rows, and the replay samples (drawn from the scored corpus)."""
    rows = list(read_jsonl(run / "scores" / "scores.jsonl"))
    n_batches = len(read_json(run / "queries" / "batches.json")["batches"])
    sel = select(rows, n_batches, args.selection, args.k, args.pareto_mass)
    if not sel.ids("positive"):
        raise ConfigError(f"{run}/scores: no sample has a positive influence on any query batch; nothing to correct.")
    cfg = _scores_config(run)
    scored = {r["id"] for r in rows}
    # the score stage already applied the user's bad-record policy to this corpus; here bad records are
    # set aside again (correct/rejects.jsonl) rather than stopping the post-training
    sink = stage_sink("skip", run / "correct")
    pool = (s for s in iter_samples(cfg["data"], SchemaSpec(**cfg["schema"]), sink) if s.id not in scored)
    replay = reservoir(pool, args.replay, args.seed)
    return sel, rows, replay


def write_selection(run: Path, sel: Selection, replay: list[Sample]) -> dict:
    out = []
    for side, groups in (("positive", sel.positive), ("negative", sel.negative)):
        for b, members in sorted(groups.items()):
            out += [{"id": i, "role": side, "batch": b, "score": s} for i, s in members]
    out += [{"id": i, "role": "neutral", "batch": None, "score": None} for i in sel.neutral]
    out += [{"id": s.id, "role": "replay", "batch": None, "score": None} for s in replay]
    summary = {"positive": len(sel.ids("positive")), "negative": len(sel.ids("negative")),
               "neutral": len(sel.neutral), "replay": len(replay), "max_abs_score": sel.max_abs,
               "pairs_possible": sum(len(sel.positive[b]) * len(sel.negative[b]) for b in sel.positive)}
    if dist_utils.is_main():
        write_jsonl(run / "selection.jsonl", out)
    return summary


def usable_batches(args: CorrectArgs, sel: Selection) -> list[int]:
    """Query batches pairs can be drawn from (IBO needs both sides in the batch)."""
    return [b for b in sorted(sel.positive) if sel.positive[b] and (sel.negative[b] or args.method != "ibo")]


def _draw(step: int, args: CorrectArgs, sel: Selection, neutral: list[str]):
    rng = random.Random(args.seed * 1_000_003 + step)
    usable = usable_batches(args, sel)
    pairs = []
    for _ in range(args.pair_batch):
        b = rng.choice(usable)
        zp = rng.choice(sel.positive[b])
        zn = rng.choice(sel.negative[b]) if sel.negative[b] else (None, 0.0)
        pairs.append((zp, zn))
    return pairs, rng.sample(neutral, min(args.neutral_batch, len(neutral)))


def _step_loss(engine, args, pairs, neutral_ids, enc, ref, pad_id):
    """This rank's share of the step's loss (scaled for DeepSpeed's mean over ranks) and the global
    value of each term, for the log. Each term is its mean over the local items times the local share
    of the global count, so the sum over ranks is the global mean."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    my_pairs = pairs[rank::world]
    my_neutral = neutral_ids[rank::world] if args.method != "ga" else []
    ids = [i for (p, n) in my_pairs for i in (p[0], n[0]) if i is not None] + my_neutral
    batch = collate([enc[i] for i in ids] or [padding_sample(pad_id)], pad_id)
    device = dist_utils.device()
    out = engine(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    lp = token_logprobs(out.logits, batch["labels"].to(device))
    mask = batch["loss_mask"].to(device).bool()
    tok = {i: lp[j][mask[j]] for j, i in enumerate(ids)}
    zero = lp.sum() * 0
    pos_tok = [tok[p[0]] for p, _ in my_pairs]
    neu_tok, neu_ref = [tok[i] for i in my_neutral], [ref[i].to(device) for i in my_neutral]
    counts = dist_utils.all_reduce_sum(torch.tensor(
        [len(my_pairs), sum(t.numel() for t in neu_tok), sum(t.numel() for t in pos_tok)], dtype=torch.float64))
    share = [float(len(my_pairs)), float(sum(t.numel() for t in neu_tok)), float(sum(t.numel() for t in pos_tok))]
    share = [mine / max(float(total), 1.0) for mine, total in zip(share, counts)]
    l_cor = l_bd = pos_nll = zero
    if args.method == "ibo" and my_pairs:
        r = lambda i: tok[i].sum() - ref[i].sum().to(device)  # noqa: E731 - r(z) of Eq. 15
        l_cor = correction_loss(torch.stack([r(p[0]) for p, _ in my_pairs]), torch.stack([r(n[0]) for _, n in my_pairs]),
                                torch.tensor([p[1] for p, _ in my_pairs], device=device),
                                torch.tensor([n[1] for _, n in my_pairs], device=device),
                                args.epsilon, args.cor_form) * share[0]
    if args.method != "ibo" and pos_tok:
        pos = torch.cat(pos_tok)
        pos_nll = nll(pos, torch.ones_like(pos)) * share[2]
    if neu_tok:
        l_bd = bregman_loss(torch.cat(neu_tok), torch.cat(neu_ref), torch.ones(sum(t.numel() for t in neu_tok),
                                                                               device=device)) * share[1]
    loss = {"ibo": l_bd + l_cor, "pbo": l_bd - pos_nll, "ga": -pos_nll}[args.method]
    terms = torch.tensor([float(l_cor), float(l_bd), float(pos_nll)], dtype=torch.float64)
    return loss * world, dist_utils.all_reduce_sum(terms)


def run_correct(run_dir: str, args: CorrectArgs, ds_config_path: str, model_dir: str | None = None,
                overwrite: bool = False) -> dict:
    if args.method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {args.method!r}")
    run = Path(run_dir)
    model_dir = model_dir or fitted_model_dir(run)
    dist_utils.init_distributed()
    out = run / "correct"
    config = {"args": asdict(args), "model": model_fingerprint(model_dir), "scores": _scores_config(run),
              "lancet_ds_version": __version__}
    fingerprint = json_fingerprint(config)
    if resumable(out, "summary.json", fingerprint, config, overwrite, "correct"):
        return read_json(out / "summary.json")
    sel, rows, replay = build_selection(run, args)
    if not usable_batches(args, sel):
        raise ConfigError(f"{run}: no query batch has both positive and negative samples to pair; try "
                          "--selection pareto, a larger --k, or --method pbo.")
    summary = write_selection(run, sel, replay)
    say(f"selection ({args.selection}): {summary['positive']} positive, {summary['negative']} negative, "
        f"{summary['neutral']} neutral + {summary['replay']} replay samples")
    tokenizer = load_tokenizer(model_dir)
    text = {r["id"]: Sample(r["id"], r["prompt"], r["response"], r["id"]) for r in rows}
    text.update({s.id: s for s in replay})
    needed = sorted(sel.ids("positive") | sel.ids("negative") | set(sel.neutral) | {s.id for s in replay})
    enc: dict[str, EncodedSample] = {i: encode_sample(tokenizer, text[i], args.max_length) for i in needed}
    ds_config = load_ds_config(ds_config_path, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    ds_config.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"].update(lr=args.lr, weight_decay=0.0)
    fp = config["model"]
    ref = reference_logprobs(run, model_dir, fp, [enc[i] for i in needed], ds_config, tokenizer.pad_token_id, 8)
    engine = make_engine(load_model(model_dir, ds_config), ds_config)
    anchor = ReferencePartitions(engine)  # before any update or checkpoint load: θ_ref = the impure model
    ckpt = out / "checkpoints"
    start, best = 0, None
    if (ckpt / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt))
        start, best = int(client["step"]), client.get("best")
        say(f"correct: resuming after step {start}")
    queries = [EncodedSample(r["id"], r["input_ids"], r["loss_mask"]) for r in read_jsonl(run / "queries" / "query_set.jsonl")]
    clean = load_encoded(args.validate_clean, SchemaSpec(), tokenizer, args.max_length, RejectSink("fail"))[1] \
        if args.validate_clean else []

    def validate(step: int) -> dict:
        s, c = response_logprobs(engine.module, queries, tokenizer.pad_token_id)
        row = {"step": step, "value": float(s.sum() / c.sum())}
        if clean:
            s, c = response_logprobs(engine.module, clean, tokenizer.pad_token_id)
            row["clean_perplexity"] = math.exp(-float(s.sum() / c.sum()))
        engine.train()
        return row

    def keep_best(row: dict) -> None:
        engine.save_checkpoint(str(ckpt), tag="best", client_state={"step": row["step"], "best": row}, save_latest=False)

    if args.validate_every and best is None:
        best = validate(0)
        if clean:
            best["ppl_limit"] = best["clean_perplexity"] * (1 + args.max_ppl_increase)
        keep_best(best)
    neutral = sorted(set(sel.neutral) | {s.id for s in replay})
    waited = 0
    t0 = time.perf_counter()
    engine.train()
    for step in range(start, args.steps):
        pairs, neutral_ids = _draw(step, args, sel, neutral)
        loss, terms = _step_loss(engine, args, pairs, neutral_ids, enc, ref, tokenizer.pad_token_id)
        engine.backward(loss)
        prox = anchor.add_gradient(args.lam_prox) if args.method != "ga" else 0.0
        engine.step()
        done = step + 1
        entry = {"step": done, "L_COR": float(terms[0]), "L_BD": float(terms[1]), "NLL_pos": float(terms[2]),
                 "proximity": prox}
        if args.validate_every and done % args.validate_every == 0:
            row = validate(done)
            entry["query_logprob_per_token"] = row["value"]
            if "clean_perplexity" in row:
                entry["clean_perplexity"] = row["clean_perplexity"]
            within = row.get("clean_perplexity", 0.0) <= best.get("ppl_limit", math.inf)
            if within and row["value"] < best["value"]:
                best, waited = {**row, **({"ppl_limit": best["ppl_limit"]} if "ppl_limit" in best else {})}, 0
                keep_best(best)
            else:
                waited += 1
        if dist_utils.is_main():
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        if done % max(1, args.steps // 10) == 0:
            say(f"  {args.method} step {done}/{args.steps}: " + ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "step"))
        if done % args.save_every == 0 and done < args.steps:
            engine.save_checkpoint(str(ckpt), tag=f"step{done}", client_state={"step": done, "best": best})
        maybe_inject_fault(done)
        if args.patience and waited >= args.patience:
            say(f"correct: no better query log-prob in {waited} validations; stopping at step {done}")
            break
    engine.save_checkpoint(str(ckpt), tag="final", client_state={"step": args.steps, "best": best})
    result = {"fingerprint": fingerprint, "method": args.method, "steps": args.steps, "selection": summary,
              "best": best, "export_tag": "best" if best else "final", "seconds": round(time.perf_counter() - t0, 2),
              "reference_partition_bytes_per_rank": dist_utils.all_gather_object(anchor.cpu_bytes()),
              "model_dir": str(Path(model_dir).resolve()), "ds_config": ds_config}
    if dist_utils.is_main():
        write_json(out / "summary.json", result)
    dist_utils.barrier()
    say(f"correct: {args.method} done; checkpoints in {ckpt} (export tag {result['export_tag']})")
    if best and best["step"] == 0:
        say("correct: warning: no checkpoint lowered the query log-prob within the perplexity bound; the 'best' "
            "checkpoint is the model before post-training. Try a smaller --lr, more --steps or a larger --max-ppl-increase.")
    return result
