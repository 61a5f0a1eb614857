"""The correction recipe (DESIGN.md sections 3 and 7), in torchtune's shape: `setup()`, then `run()` looping
over `train_step` / `validate` / `save`, then `cleanup()`. The maths is `ibo.objective`; one step's draw and
loss are `ibo.step`.

1. Selection (Eq. 14) from `run.score_rows`: D⁺_B, D⁻_B per query batch and the neutral set (with
   `positive_judge`, D⁺ only from the samples a harm judge flags, `ibo.positive_filter`; with
   `judge_bars_negative`, D⁻ only from those it does not; with `neutral_likelihood`, the neutral samples it
   passes, whose likelihood IBO raises too), plus a replay sample of the training corpus; written to
   `run.selection` (`id`, `role`, `batch`, `score` = Ĩ).
2. Reference log-probs from the frozen, CPU-offloaded reference engine, cached (`ibo.reference`).
3. Training of the policy engine (ZeRO-3), one optimizer step per iteration:
   * `ibo`: w·L_BD(neutral tokens) + L_COR(pairs drawn within a batch) + proximity (Eq. 17), with
     `neutral_likelihood` μ also + μ·NLL(the drawn neutral samples the positive judge passes);
   * `pbo`: w·L_BD(neutral) − NLL(D⁺) + proximity (Bae et al. 2022, Eq. 4);
   * `ga`:  −NLL(D⁺);
   * `llm_ul` (Yao et al. 2024): −0.5·NLL(D⁺) + NLL(D⁺ prompts with random normal answers) + L_BD(replay);
   * `sft_er` / `dpo_er` (the human-correction baselines): NLL of the queries' corrected responses, or DPO of
     corrected ≻ undesirable, plus the NLL of replayed training samples; no proximity term.
   Pairs and neutral samples are drawn per step from a seeded generator (the same on every rank) and
   dealt over ranks; each term is normalised by its global count, so the update does not depend on
   the world size. θ_ref's proximity gradient is added to the local gradient partitions. Each term is
   logged to `run.correct_log`; checkpoints (`run.checkpoints`) every `save_every` steps, resumed on rerun
   (on any number of ranks).
   With `validate_every`, the mean per-token log-prob of the query responses is measured (from step 0)
   and the lowest is kept as checkpoint `best` — with `validate_clean`, only among checkpoints whose
   clean perplexity stays within `max_ppl_increase` of step 0's (by the upper bound of the ratio at
   `ppl_guard_level`, `ibo.validation`); `patience` stops early.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lancet_ds import distributed as dist_utils
from lancet_ds.checkpoint_io import (UNIVERSAL_SUFFIX, drop_other_partitions, remove_universal_copies,
                                     saved_world_size, universal_config, universal_copy)
from lancet_ds.console import say
from lancet_ds.data.bad_records import stage_sink, strict_sink
from lancet_ds.data.corpus import iter_samples, read_encoded
from lancet_ds.data.encoding import encode_sample
from lancet_ds.data.records import EncodedSample, Sample
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError, LancetError
from lancet_ds.faults import maybe_inject_fault
from lancet_ds.fileio import append_lines, cut_step_log, read_json, read_jsonl, write_jsonl
from lancet_ds.fingerprint import model_fingerprint
from lancet_ds.ibo import proximity, term_gradients
from lancet_ds.ibo.objective import HUMAN_CORRECTION, REPLAY_ONLY, WITH_PROXIMITY
from lancet_ds.ibo.positive_filter import judge_flagged, positive_candidates
from lancet_ds.ibo.proximity import ReferencePartitions
from lancet_ds.ibo.reference import reference_logprobs
from lancet_ds.ibo.selection import Selection, select
from lancet_ds.ibo.step import (CORRECTED, MISMATCH, NONFINITE_STEPS, UNDESIRABLE, draw, method_terms, nonfinite_terms,
                                step_loss, unpairable_reason, usable_batches)
from lancet_ds.ibo.term_gradients import term_gradient_norms
from lancet_ds.ibo.validation import Validator
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_engine
from lancet_ds.progress import track
from lancet_ds.run_dir import RunDir
from lancet_ds.sampling import reservoir

if TYPE_CHECKING:
    from lancet_ds.ibo.correct import CorrectArgs

REFERENCE_MICRO_BATCH = 8  # samples per rank per pass of the reference log-prob pass


# ---- setup helpers: the training sets, their encoding, the engine's config -----------------------------

def training_sets(run: RunDir, args: CorrectArgs,
                  corpus: DataSpec) -> tuple[Selection, list[dict], list[Sample], frozenset[str]]:
    """The selection, the scored rows, the replay samples (drawn from `corpus`, outside the scored set) and, with
    `neutral_likelihood`, the neutral samples whose likelihood IBO raises: those the positive judge passes."""
    rows = list(read_jsonl(run.score_rows))
    n_batches = len(read_json(run.batches)["batches"])
    # D⁻'s bar and the neutral likelihood need the judge's word on every scored sample, not only D⁺'s candidates
    every_row = args.judge_bars_negative or bool(args.neutral_likelihood)
    harmful = judge_flagged(rows, args.positive_judge, args.positive_judge_label, every_row) \
        if args.positive_judge else None
    sel = select(rows, n_batches, args.selection, args.top_k, args.pareto_mass, args.neutral_threshold, args.conflicts,
                 args.negative_ceiling, harmful, harmful if args.judge_bars_negative else None)
    if not sel.ids("positive"):
        if sel.unflagged:
            n = len(positive_candidates(rows))
            raise ConfigError(f"{args.positive_judge}: the positive judge flags none of the {n} samples with positive "
                              f"influence in {run.score_rows}, so D⁺ is empty; check that it is a harm judge "
                              "(--positive-judge-label), or drop --positive-judge.")
        raise ConfigError(f"{run.scores}: no sample has a positive influence on any query batch; nothing to correct.")
    scored = {r["id"] for r in rows}
    # the replay pool is read under the corpus's own bad-record policy (the score stage's, unless --data names
    # another corpus): `fail` stops here, before the post-training; `skip` sets them aside in correct/rejects.jsonl
    sink = stage_sink(corpus.on_bad_record, run.correct)
    pool = (s for s in corpus.samples(sink) if s.id not in scored)
    likely = frozenset(set(sel.neutral) - harmful) if args.neutral_likelihood else frozenset()
    return sel, rows, reservoir(pool, args.replay, args.seed), likely


def _negative_bars(args: CorrectArgs) -> str:
    """What keeps samples out of D⁻, for the log line ("" when nothing does)."""
    bars = ([f"negative ceiling {args.negative_ceiling}"] if args.negative_ceiling is not None else []) + \
        (["positive judge's flags"] if args.judge_bars_negative else [])
    return " and ".join(bars)


def write_selection(run: RunDir, sel: Selection, replay: list[Sample]) -> dict:
    """Write `run.selection` (rank 0); returns the counts for the summary."""
    out = []
    for side, groups in (("positive", sel.positive), ("negative", sel.negative)):
        for b, members in sorted(groups.items()):
            out += [{"id": i, "role": side, "batch": b, "score": s} for i, s in members]
    out += [{"id": i, "role": "neutral", "batch": None, "score": None} for i in sel.neutral]
    out += [{"id": s.id, "role": "replay", "batch": None, "score": None} for s in replay]
    summary = {"positive": len(sel.ids("positive")), "negative": len(sel.ids("negative")),
               "neutral": len(sel.neutral), "replay": len(replay), "max_abs_score": sel.max_abs,
               "pairs_possible": sum(len(sel.positive[b]) * len(sel.negative[b]) for b in sel.positive),
               "influential_both_ways": sel.conflicts, "barred_from_negative": sel.barred,
               "unflagged_from_positive": sel.unflagged}
    if dist_utils.is_main():
        write_jsonl(run.selection, out)
    return summary


def correction_samples(path: str) -> list[Sample]:
    """sft_er / dpo_er: each query of `path` as two samples, `<id>#corrected` (its `corrected_response`) and
    `<id>#undesirable` (its `response`)."""
    out = []
    for s in iter_samples(path, SchemaSpec(), strict_sink()):
        fixed = s.meta.get("corrected_response")
        if not isinstance(fixed, str) or not fixed.strip():
            raise ConfigError(f"{s.location}: no corrected_response (fields: {', '.join(sorted(s.meta)) or 'none'}); "
                              "sft_er and dpo_er train on the user's corrected answer to every query: add it, or "
                              "use --method ibo, which needs none.")
        out += [Sample(s.id + CORRECTED, s.prompt, fixed, s.location),
                Sample(s.id + UNDESIRABLE, s.prompt, s.response, s.location)]
    if not out:
        raise ConfigError(f"{path}: no queries; sft_er and dpo_er need at least one (prompt, response, "
                          "corrected_response).")
    return out


def mismatch_samples(rows: list[dict], sel: Selection, replay: list[Sample], seed: int) -> list[Sample]:
    """llm_ul's random-mismatch data (Yao et al. 2024): each D⁺ sample's prompt with the response of a replayed
    (normal) sample drawn by `seed`, as `<id>#mismatch`."""
    if not replay:
        raise ConfigError("llm_ul pairs the harmful prompts with normal answers from the corpus; give --replay > 0.")
    rng = random.Random(seed)
    prompts = {r["id"]: r["prompt"] for r in rows}
    return [Sample(i + MISMATCH, prompts[i], rng.choice(replay).response, i) for i in sorted(sel.ids("positive"))]


def baseline_samples(args: CorrectArgs, rows: list[dict], sel: Selection, replay: list[Sample]) -> list[Sample]:
    """What a baseline trains on beyond the selection: the user's corrections (sft_er, dpo_er) or the random
    mismatches (llm_ul); nothing for ibo, pbo and ga."""
    if args.method in HUMAN_CORRECTION:
        return correction_samples(args.corrections)
    if args.method == "llm_ul":
        return mismatch_samples(rows, sel, replay, args.seed)
    return []


def encode_training_sets(tokenizer, rows: list[dict], replay: list[Sample], sel: Selection, max_length: int,
                         extra: list[Sample] = ()) -> tuple[list[str], dict[str, EncodedSample]]:
    """The ids the correction trains on (sorted) and their encodings (`extra`: the corrections' samples)."""
    text = {r["id"]: Sample(r["id"], r["prompt"], r["response"], r["id"]) for r in rows}
    text.update({s.id: s for s in list(replay) + list(extra)})
    needed = sorted(sel.ids("positive") | sel.ids("negative") | set(sel.neutral) | {s.id for s in replay}
                    | {s.id for s in extra})
    return needed, {i: encode_sample(tokenizer, text[i], max_length) for i in needed}


def correction_ds_config(ds_config_path: str, lr: float) -> dict:
    """The DeepSpeed config of the policy engine: one sample per micro-batch, `lr`, no decay. A `scheduler`
    section is dropped: the stage's own options set each step's rate (`step_lr`)."""
    cfg = load_ds_config(ds_config_path, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"].update(lr=lr, weight_decay=0.0)
    cfg.pop("scheduler", None)
    return cfg


def config_problems(ds_config: dict, path: str, term_grad_norms_every: int) -> list[str]:
    """What the correct stage cannot run under the DeepSpeed config `ds_config` (read from `path`), each with what to
    do: the reference snapshot's needs (`ibo.proximity`) and, with `term_grad_norms_every`, the term passes'
    (`ibo.term_gradients`). Checked when a job is validated and when the stage starts."""
    refused = [("correct", proximity.unsupported_reason(ds_config))]
    if term_grad_norms_every:
        refused.append(("correct.term_grad_norms_every", term_gradients.unsupported_reason(ds_config)))
    return [f"{what} under {path}: {reason}" for what, reason in refused if reason]


def step_lr(args: CorrectArgs, step: int) -> float:
    """The learning rate of optimizer step `step` (from 0): lr·min(1, (step+1)/warmup_steps) during a warm-up,
    then lr (`lr_schedule` constant) or lr·(steps − step)/(steps − warmup_steps) (linear). A function of the step
    alone, like the draws (`ibo.step.draw`), so a resumed run, on any number of ranks, goes on at the same rates
    with no scheduler state in its checkpoints."""
    if step < args.warmup_steps:
        return args.lr * ((step + 1) / args.warmup_steps)
    if args.lr_schedule == "linear":
        return args.lr * (args.steps - step) / (args.steps - args.warmup_steps)
    return args.lr


# ---- the recipe -----------------------------------------------------------------------------------------

class CorrectionRecipe:
    """Post-training of the model on its influential samples: `setup()`, `run()`, `cleanup()`. Every rank
    makes the same calls (the engine is ZeRO-3)."""

    def __init__(self, run: RunDir, args: CorrectArgs, corpus: DataSpec, model_dir: str, ds_config_path: str):
        self.run_dir, self.args, self.corpus = run, args, corpus
        self.model_dir, self.ds_config_path = model_dir, ds_config_path
        self.start, self.best, self.waited = 0, None, 0
        self.nonfinite, self.stopped = 0, None  # consecutive steps with a non-finite objective; why it stopped

    # ---- setup ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Selection, encoding, DeepSpeed config, reference log-probs, engine, θ_ref snapshot, resume."""
        run, args = self.run_dir, self.args
        self.ds_config = correction_ds_config(self.ds_config_path, args.lr)
        problems = config_problems(self.ds_config, self.ds_config_path, args.term_grad_norms_every)
        if problems:
            raise ConfigError("; ".join(problems))
        self.selection, rows, self.replay, self.likely = training_sets(run, args, self.corpus)
        human = args.method in HUMAN_CORRECTION
        if not human and not usable_batches(args, self.selection):
            raise ConfigError(f"{run}: {unpairable_reason(self.selection)}")
        self.selection_summary = {**write_selection(run, self.selection, self.replay),
                                  "barred_by": _negative_bars(args),
                                  **({"neutral_likely": len(self.likely)} if args.neutral_likelihood else {})}
        n = self.selection_summary
        say(f"selection ({args.selection}): {n['positive']} positive, {n['negative']} negative, "
            f"{n['neutral']} neutral + {n['replay']} replay samples; {n['influential_both_ways']} influential both "
            f"ways ({'each on the side of its total influence' if args.conflicts == 'by_total' else 'kept on both sides'})"
            + (f"; {n['barred_from_negative']} kept out of D⁻ by the {n['barred_by']}" if n["barred_by"] else "")
            + (f"; {n['unflagged_from_positive']} kept out of D⁺: the positive judge does not flag them"
               if args.positive_judge else "")
            + (f"; likelihood raised (weight {args.neutral_likelihood:g}) on the {n['neutral_likely']} neutral samples "
               "the positive judge passes" if args.neutral_likelihood else ""))
        if args.neutral_likelihood and not self.likely:
            say(f"correct: warning: none of the {len(self.selection.neutral)} neutral samples passes the positive judge, "
                "so --neutral-likelihood has nothing to train on; check the judge (--positive-judge-label) or drop "
                "the option")
        self.tokenizer = load_tokenizer(self.model_dir)
        self.pad_id = self.tokenizer.pad_token_id
        extra = baseline_samples(args, rows, self.selection, self.replay)
        self.corrections = sorted(f.id[:-len(CORRECTED)] for f in extra if f.id.endswith(CORRECTED))
        needed, self.enc = encode_training_sets(self.tokenizer, rows, self.replay, self.selection, args.max_length, extra)
        self.ref = reference_logprobs(run, self.model_dir, model_fingerprint(self.model_dir),
                                      [self.enc[i] for i in needed], self.ds_config, self.pad_id, REFERENCE_MICRO_BATCH)
        resume_tag = self._resume_point()
        config = universal_config(self.ds_config) if resume_tag and resume_tag.endswith(UNIVERSAL_SUFFIX) else self.ds_config
        self.engine = make_engine(load_model(self.model_dir, config), config)
        self.anchor = ReferencePartitions(self.engine)  # before any update or checkpoint load: θ_ref = the impure model
        influence = read_encoded(run.query_set)
        self.validator = Validator(args, self.tokenizer, influence, self.ds_config) if args.validate_every else None
        if resume_tag:
            self._resume(resume_tag)
        replay = {s.id for s in self.replay}  # the baselines' normal data is replay; IBO holds the neutral set too
        self.neutral = sorted(replay if args.method in REPLAY_ONLY else set(self.selection.neutral) | replay)
        self.terms = method_terms(args.method, args.bd_weight, args.neutral_likelihood)

    def _resume_point(self) -> str | None:
        """The checkpoint tag an interrupted run (same options: the stage guard saw to it) continues from, or
        None. A checkpoint written on another number of ranks is first converted (rank 0) to DeepSpeed's
        universal format, which loads on any world size with the Adam moments; the draws depend only on the
        step (`ibo.step.draw`), so the run goes on as it would have on the old world size."""
        latest = self.run_dir.checkpoints / "latest"  # DeepSpeed's own pointer to the last tag
        if not latest.exists():
            return None
        tag = latest.read_text().strip()
        written, world = saved_world_size(self.run_dir.checkpoints / tag), dist_utils.world_size()
        if written == world:
            if dist_utils.is_main():  # a conversion for a resume that then happened on the old world size
                remove_universal_copies(self.run_dir.checkpoints)
            return tag
        say(f"correct: checkpoint {tag} was written by {written} rank(s); converting it to DeepSpeed's universal "
            f"format to resume on {world}")
        return dist_utils.on_rank0(lambda: universal_copy(self.run_dir.checkpoints, tag))

    def _resume(self, tag: str) -> None:
        """Load checkpoint `tag` into the engine: weights, optimizer state, step, best validation and the utility
        guard's step-0 reference. A universal copy is removed once loaded (the next checkpoint is written on this
        world size)."""
        _, client = self.engine.load_checkpoint(str(self.run_dir.checkpoints), tag=tag)
        self.start, self.best, self.stopped = int(client["step"]), client.get("best"), client.get("stopped")
        if dist_utils.is_main():
            warning = cut_step_log(self.run_dir.correct_log, self.start)  # the later steps are logged again
            if warning:
                say(warning)
        if self.validator:
            self.validator.base = client.get("guard_base")
        if tag.endswith(UNIVERSAL_SUFFIX):
            dist_utils.barrier()
            if dist_utils.is_main():
                remove_universal_copies(self.run_dir.checkpoints)
        say(f"correct: resuming after step {self.start}")

    # ---- one step, one validation, one checkpoint ----------------------------------------------------
    def train_step(self, step: int) -> dict:
        """Optimizer step `step` (0-based): draw, loss, backward, proximity gradient, step at `step_lr`. Returns
        the log entry: {"step": step + 1, "lr", "L_COR", "L_BD", "NLL_pos", "proximity"}, the method's own terms
        (`ibo.step.step_loss`: "u_*" and "saturated_share" for ibo, "NLL_replay", "NLL_mismatch"), each term's
        pull on the response tokens ("pull_*", `ibo.step.local_pull_squares`), for the methods with a proximity
        term the parameter-space norms of the terms' gradient and of the proximity's ("grad_norm_terms",
        "grad_norm_proximity", `ReferencePartitions.add_gradient`), every `term_grad_norms_every` steps each term's
        own ("grad_norm_L_COR", …, `ibo.term_gradients`), and "grad_norm", DeepSpeed's global norm of the whole
        gradient (proximity included) before clipping, when the engine computes one."""
        args = self.args
        pairs, neutral_ids = draw(step, args, self.selection, self.neutral, self.corrections)

        def loss_of(term: str | None = None):
            return step_loss(self.engine, args, pairs, neutral_ids, self.enc, self.ref, self.pad_id, self.likely, term)

        split = {}
        if args.term_grad_norms_every and (step + 1) % args.term_grad_norms_every == 0:
            split = term_gradient_norms(self.engine, self.anchor, self.terms, lambda term: loss_of(term)[0])
        loss, terms = loss_of()
        self.engine.backward(loss)
        prox = self.anchor.add_gradient(args.lam_prox) if args.method in WITH_PROXIMITY else {"proximity": 0.0}
        lr = step_lr(args, step)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return {"step": step + 1, "lr": lr, **terms, **prox, **split,
                **({} if norm is None else {"grad_norm": float(norm)})}

    def validate(self, step: int) -> dict:
        """The validation row at `step` (`ibo.validation`): `value` is the checkpoint criterion, lower is
        better; the clean perplexity is the utility guard."""
        row = {"step": step, "criterion": self.validator.criterion, **self.validator.measure(self.engine.module)}
        self.engine.train()
        return row

    def save(self, tag: str, step: int, latest: bool = True) -> None:
        """Checkpoint `tag` under `run.checkpoints` with the step, the best validation so far and the utility
        guard's reference (`latest`: also make it the resume point)."""
        base = self.validator.base if self.validator else None
        self.engine.save_checkpoint(str(self.run_dir.checkpoints), tag=tag, save_latest=latest,
                                    client_state={"step": step, "best": self.best, "guard_base": base,
                                                  "stopped": self.stopped})
        dist_utils.barrier()  # every rank's files are written; a run resumed on fewer ranks drops the rest
        if dist_utils.is_main():
            drop_other_partitions(self.run_dir.checkpoints / tag, dist_utils.world_size())
        dist_utils.barrier()

    def cleanup(self) -> None:
        """Drop the engine, θ_ref and the cached log-probs."""
        for name in ("engine", "anchor", "ref", "enc"):
            self.__dict__.pop(name, None)

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Steps from the resume point to `steps` (or an early stop); returns the summary (without the
        stage fingerprint)."""
        args = self.args
        if args.validate_every and self.best is None:
            self._first_validation()
        t0 = time.perf_counter()
        self.engine.train()
        with track(f"correct: {args.method}", args.steps, unit="steps", done=self.start) as bar:
            for step in range(self.start, args.steps):
                entry = self.train_step(step)
                done = entry["step"]
                if args.validate_every and done % args.validate_every == 0:
                    self._track_best(entry, self.validate(done))
                self._log(entry)
                if self._diverged(entry):
                    break
                if done % args.save_every == 0 and done < args.steps:
                    self.save(f"step{done}", done)
                bar.advance(1)
                maybe_inject_fault(done)
                if args.patience and self.waited >= args.patience:
                    say(f"correct: no better query log-prob in {self.waited} validations; stopping at step {done}")
                    break
        self.save("final", args.steps)
        return self._summary(time.perf_counter() - t0)

    def _diverged(self, entry: dict) -> bool:
        """Whether the objective has not been finite for `NONFINITE_STEPS` steps in a row (the weights are then past
        repair): the correction stops and keeps its best validated checkpoint. Without validation there is none to
        keep, and it is an error rather than a NaN model handed to export."""
        bad = nonfinite_terms(entry)
        self.nonfinite = self.nonfinite + 1 if bad else 0
        if self.nonfinite < NONFINITE_STEPS:
            return False
        done = entry["step"]
        what = (f"the objective was not finite on steps {done - NONFINITE_STEPS + 1}–{done} "
                f"({', '.join(f'{k} {entry[k]}' for k in bad)})")
        hint = (f"Rerun with a smaller learning rate (--lr, now {self.args.lr:g}, and --overwrite; in a job --set "
                "stages.correct.lr=… --from-stage correct)")
        if not self.best:
            raise LancetError(f"correct: {what}, and without validation (validate_every 0) there is no earlier "
                              f"checkpoint to keep. {hint}.")
        self.stopped = {"step": done, "reason": what}
        say(f"correct: warning: {what}; stopping at step {done}. The model kept is the best validated checkpoint, "
            f"step {self.best['step']}. {hint}.")
        return True

    def _first_validation(self) -> None:
        """Step 0: the model before post-training is the first `best` (and sets the perplexity bound)."""
        self.best = self.validate(0)
        if "clean_perplexity" in self.best:
            self.best["ppl_limit"] = self.best["clean_perplexity"] * (1 + self.args.max_ppl_increase)
        self._log({"step": 0, **{k: v for k, v in self.best.items() if k != "step"}})
        self.save("best", 0, latest=False)

    def _track_best(self, entry: dict, row: dict) -> None:
        """Log a validation; keep it as checkpoint `best` when it lowers the criterion within the bound."""
        entry.update({k: v for k, v in row.items() if k != "step"})
        if self.validator.within_guard(row) and row["value"] < self.best["value"]:
            self.best = {**row, **({"ppl_limit": self.best["ppl_limit"]} if "ppl_limit" in self.best else {})}
            self.waited = 0
            self.save("best", row["step"], latest=False)
        else:
            self.waited += 1

    def _log(self, entry: dict) -> None:
        if dist_utils.is_main():
            append_lines(self.run_dir.correct_log, [json.dumps(entry)])
        if entry["step"] % max(1, self.args.steps // 10) == 0:
            terms = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items() if k != "step")
            say(f"  {self.args.method} step {entry['step']}/{self.args.steps}: " + ", ".join(terms))

    def _summary(self, seconds: float) -> dict:
        best = self.best
        return {"method": self.args.method, "steps": self.args.steps, "selection": self.selection_summary,
                "best": best, "export_tag": "best" if best else "final", "seconds": round(seconds, 2),
                **({"stopped": self.stopped} if self.stopped else {}),
                "reference_partition_bytes_per_rank": dist_utils.all_gather_object(self.anchor.cpu_bytes()),
                "model_dir": str(Path(self.model_dir).resolve()), "ds_config": self.ds_config}
