"""`lancet-ds correct`: post-train the impure model on its influential samples (DESIGN.md section 3) with IBO,
or the PBO / GA / LLM-UL baselines, or the human-correction baselines SFT-ER / DPO-ER. `CorrectArgs` declares the
options; `run_correct` is the stage: it checks the stage guard (reuse a finished result, resume an
unfinished one, refuse other options), runs the recipe (`ibo.recipe.CorrectionRecipe`) and writes
`run.correct_summary`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.spec import DataSpec
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, write_json
from lancet_ds.fingerprint import content_sha256, model_fingerprint
from lancet_ds.ibo.objective import DPO_ER_BETA, HUMAN_CORRECTION
from lancet_ds.ibo.recipe import CorrectionRecipe
from lancet_ds.modeling import releases_engines
from lancet_ds.options import at_least, choices, finite, positive, recorded, within
from lancet_ds.run_dir import STAGE_RECORD, RunDir
from lancet_ds.stage_guard import resumable, stage_fingerprint


VALIDATION_FILES = ("validation_queries", "validation_prompts", "validation_judge", "validation_clean")
FILE_OPTIONS = VALIDATION_FILES + ("corrections", "positive_judge")
"""Options naming input files: resolved against a job file's folder, their content in the stage guard."""


@dataclass
class CorrectArgs:
    """Options of the post-training (defaults: the paper's Appendix D.2 batch sizes)."""

    method: Literal["ibo", "pbo", "ga", "llm_ul", "sft_er", "dpo_er"] = "ibo"
    """ibo (L_BD + L_COR + proximity, Eq. 17), pbo (L_BD − NLL(D⁺) + proximity, Eq. 4), ga (−NLL(D⁺)), llm_ul
    (Yao et al. 2024: ascent on D⁺, D⁺'s prompts with random normal answers, KL to the impure model on replayed
    samples), or the human-correction baselines with experience replay: sft_er (SFT on --corrections'
    corrected responses) and dpo_er (DPO, corrected ≻ undesirable); both add the NLL of --replay samples."""
    corrections: str | None = None
    """sft_er / dpo_er: the user's corrections, a JSONL of influence queries with `prompt`, `response` (the
    undesirable answer) and `corrected_response`."""
    selection: Literal["topk", "pareto"] = "topk"
    """topk: the top-k samples per side and query batch; pareto: the smallest set carrying --pareto-mass."""
    top_k: int = 16
    """topk: samples per side and query batch."""
    pareto_mass: float = 0.8
    """pareto: share of each side's total |Ĩ| the selected samples carry."""
    conflicts: Literal["by_total", "keep"] = "by_total"
    """A sample influential both ways (raising one query batch, lowering another): by_total puts it only on
    the side of its total Ĩ over batches; keep selects per batch as the paper prints (it may be raised for one
    batch and lowered for another)."""
    negative_ceiling: float | None = None
    """A sample whose Ĩ reaches this on any query batch never enters D⁻ (L_COR would raise the likelihood of a
    sample that raises that batch's behaviour), whatever its total Ĩ; None: off."""
    positive_judge: str | None = None
    """A harm judge (as `evaluate --judge`): only the candidates it flags as harmful may enter D⁺, the next-ranked
    flagged sample taking an unflagged one's place, so IBO does not unlearn a refusal that merely quotes the
    forbidden act (`ibo.positive_filter`); None: off."""
    positive_judge_label: str | None = None
    """The positive judge's harmful label, when its labels are not named harmful / unsafe / toxic."""
    judge_bars_negative: bool = False
    """With --positive-judge: a candidate it flags as harmful never enters D⁻ either (L_COR would raise its
    likelihood), the next-ranked unflagged sample taking its place; off: the judge filters D⁺ only."""
    neutral_likelihood: float = 0.0
    """ibo with --positive-judge: weight μ of a likelihood term, μ·NLL of the step's neutral samples from the scored
    set that the judge does not flag, added to Eq. 17's objective (`ibo.objective.objective`). L_BD only holds
    the neutral samples at the reference, and the correction still lowers the benign ones that look like the
    harmful answers (the demo world's twins); this term raises them as DPO-ER's replay does. The replayed corpus
    samples are not judged and stay under L_BD alone. 0: off (the paper's objective)."""
    replay: int = 64
    """Training samples drawn from the corpus into the neutral set."""
    epsilon: float = -1.0
    """ε of L_COR: −1 corrects, +1 reinforces."""
    cor_form: Literal["dpo", "paper"] = "dpo"
    """dpo: −log σ(ε·u) (bounded); paper: −ε·log σ(u) as printed."""
    beta: float | None = None
    """Temperature on the pair margin u = β(Ĩ⁺r⁺ + Ĩ⁻r⁻) (DPO's β; the paper's is 1): the bounded L_COR stops
    once ε·u ≈ 4.6, so a smaller β keeps pushing until the pairs are further apart, a larger one pushes harder
    at first and stops sooner. Also DPO's β for dpo_er. Default: 1 (the paper's), 0.1 for dpo_er (DPO's usual
    value; at 1 its loss vanishes within a few steps)."""
    lam_prox: float = 1e-3
    """λ of the proximity term."""
    bd_weight: float = 1.0
    """Weight of L_BD (the Bregman divergence on the neutral and replayed samples, Eq. 16) in ibo's and pbo's
    objective; the paper's is 1. Near θ_ref, L_BD ≈ ½Δ² per token, so its pull grows only as the neutral
    tokens drift: a larger weight holds them (and clean perplexity) closer at the cost of a slower correction."""
    lr: float = 1e-5
    """Learning rate, the paper's 1e-5 (constant after any warm-up); small models need more."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up: optimizer step t (from 0) uses lr·min(1, (t+1)/warmup_steps), so the first
    Adam updates, full-sized whatever the gradient's scale, are small (0: none, the paper's constant lr)."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """The rate after any warm-up: constant (the paper's), or linear decay, step t at lr·(steps − t)/(steps −
    warmup_steps), so the last step runs at lr/(steps − warmup_steps). Adam's updates are about lr per coordinate
    whatever the gradient's size, so at a constant rate the model keeps moving as fast once the terms' gradients
    shrink or cancel; the decay slows those late steps."""
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
    term_grad_norms_every: int = 0
    """Every N steps, log each term's gradient norm in parameter space (`grad_norm_L_COR`, `grad_norm_L_BD`, …;
    `ibo.term_gradients`), at the cost of one more forward and backward pass per term on those steps; the update
    is the same with or without it (0: off)."""
    neutral_threshold: float = 0.05
    """Scored samples whose |Ĩ| stays below this on every query batch are neutral (L_BD holds them at the
    reference); more influential unselected samples are left out of training."""
    validate_every: int = 0
    """Validate every N steps on the validation data (never the influence queries) and keep the best
    checkpoint (0: off)."""
    select_by: Literal["auto", "harm", "logprob"] = "auto"
    """What chooses the checkpoint: harm (mean harmful score of sampled generations on the validation
    prompts, the paper's choice), logprob (mean per-token log-prob of the validation queries' undesirable
    answers); auto: harm when validation prompts and a judge are given, else logprob."""
    validation_queries: str | None = None
    """Held-out (prompt, undesirable response) pairs, disjoint from the influence queries: logprob criterion."""
    validation_prompts: str | None = None
    """Held-out prompts (a boolean `forbidden` field marks those that count): harm criterion."""
    validation_judge: str | None = None
    """Harm judge for the validation generations (as `evaluate --judge`)."""
    validation_judge_label: str | None = None
    """The validation judge's harmful label, when its labels are not named harmful / unsafe / toxic."""
    validation_n: int = 1
    """Sampled generations per validation prompt (seeds fixed across validations)."""
    validation_max_new_tokens: int = 64
    """Longest validation generation."""
    validation_clean: str | None = None
    """Held-out clean samples: a checkpoint counts as best only while its perplexity on them stays within
    `max_ppl_increase` of the model's before post-training (the utility guard)."""
    max_ppl_increase: float = 0.05
    """Allowed relative rise of the validation clean perplexity for a best checkpoint."""
    ppl_guard_level: float = 0.95
    """Confidence of the utility guard: a checkpoint qualifies when the one-sided upper bound at this level
    (paired bootstrap over the validation clean samples) of its perplexity over step 0's stays within
    1 + max_ppl_increase, so the promise holds beyond the validation samples; 0: the point ratio."""
    patience: int = 0
    """Stop after this many validations without improvement (0: never)."""
    max_length: int = 512
    """Tokens per sample (right-truncated)."""

    def margin_beta(self) -> float:
        """β as given, else the method's default: DPO_ER_BETA for dpo_er, the paper's 1 for the others."""
        if self.beta is not None:
            return self.beta
        return DPO_ER_BETA if self.method == "dpo_er" else 1.0

    def record(self) -> dict:
        """The options as records keep them (`options.recorded`): β resolved to the value used, so a record says
        what ran and one made before β's default depended on the method still matches; `neutral_likelihood`
        only when it is on, `lr_schedule` only when it is not constant; not `term_grad_norms_every`, which
        changes the log, not the result."""
        record = {**asdict(self), "beta": self.margin_beta()}
        if not self.neutral_likelihood:  # off: a record made before the option existed still matches
            record.pop("neutral_likelihood")
        if self.lr_schedule == "constant":  # likewise
            record.pop("lr_schedule")
        record.pop("term_grad_norms_every")  # a log option: the result is the same, so a run made with another resumes
        return record

    def validate(self) -> list[str]:
        """The problems of these options (empty when they are fine)."""
        problems = [f"{name}: {getattr(self, name)!r} is not one of {list(choices(type(self), name))}"
                    for name in ("method", "selection", "cor_form", "conflicts", "lr_schedule")
                    if getattr(self, name) not in choices(type(self), name)]
        for name in ("steps", "top_k", "pair_batch", "save_every"):
            problems += at_least(self, name, 1)
        for name in ("neutral_batch", "replay", "validate_every", "patience", "lam_prox", "max_ppl_increase",
                     "bd_weight", "warmup_steps", "neutral_likelihood", "term_grad_norms_every"):
            problems += at_least(self, name, 0)
        problems += positive(self, "lr") + positive(self, "beta", allow_none=True) + at_least(self, "max_length", 2)
        problems += finite(self, "lam_prox", "bd_weight", "neutral_likelihood", "epsilon")
        problems += positive(self, "pareto_mass") or within(self, "pareto_mass", 0, 1)
        if self.lr_schedule == "linear" and self.warmup_steps >= self.steps:
            problems.append(f"lr_schedule: linear decays over the steps after the warm-up, but warmup_steps "
                            f"{self.warmup_steps} ≥ steps {self.steps}; lower warmup_steps or keep lr_schedule "
                            "constant")
        if not (self.ppl_guard_level == 0 or 0.5 <= self.ppl_guard_level < 1):
            problems.append(f"ppl_guard_level: a one-sided confidence in [0.5, 1), or 0 for the point ratio; got "
                            f"{self.ppl_guard_level!r}")
        if self.epsilon == 0:
            problems.append(f"epsilon: must not be 0 (−1 corrects, +1 reinforces), got {self.epsilon!r}")
        if self.method in HUMAN_CORRECTION and not self.corrections:
            problems.append(f"corrections: method {self.method} trains on the user's corrected responses; give a "
                            "JSONL with prompt, response and corrected_response")
        if self.patience > 0 and self.validate_every <= 0:
            problems.append(f"patience: {self.patience} needs validate_every > 0 (it counts validations without gain)")
        problems += at_least(self, "neutral_threshold", 0) + at_least(self, "validation_n", 1)
        problems += at_least(self, "negative_ceiling", 0, allow_none=True)
        problems += at_least(self, "validation_max_new_tokens", 1)
        if self.judge_bars_negative and not self.positive_judge:
            problems.append("judge_bars_negative: needs positive_judge, the harm judge whose flags keep samples "
                            "out of D⁻")
        if self.neutral_likelihood > 0 and (self.method != "ibo" or not self.positive_judge):
            problems.append(f"neutral_likelihood: {self.neutral_likelihood!r} needs method ibo and positive_judge, the "
                            "harm judge whose unflagged neutral samples it trains on (got method "
                            f"{self.method}{', no positive_judge' if not self.positive_judge else ''})")
        if self.validate_every > 0:
            problems += self._validation_problems()
        return problems

    def criterion(self) -> str:
        """The checkpoint criterion `select_by` resolves to."""
        if self.select_by != "auto":
            return self.select_by
        return "harm" if self.validation_prompts and self.validation_judge else "logprob"

    def _validation_problems(self) -> list[str]:
        if self.criterion() == "harm" and not (self.validation_prompts and self.validation_judge):
            return ["select_by: harm needs validation_prompts and validation_judge"]
        if self.criterion() == "logprob" and not self.validation_queries:
            return ["validate_every: choosing a checkpoint needs validation data disjoint from the influence "
                    "queries: validation_queries (logprob), or validation_prompts and validation_judge (harm)"]
        return []


def stage_config(run: RunDir, args: CorrectArgs, corpus: DataSpec, model_dir: str) -> dict:
    """What the stage guard fingerprints: the options, the model's weights, the scores (through the score
    stage's own fingerprint) and the corpus the replay sample comes from."""
    model = model_fingerprint(model_dir)
    record = run.scores / STAGE_RECORD
    if not run.score_rows.exists() or not record.exists():
        raise ConfigError(f"{run.score_rows}: missing. Run `lancet-ds score --run {run}` first.")
    return {"args": recorded(args), "model": model, "scores": read_json(record)["fingerprint"],
            "corpus": corpus.fingerprint(), "lancet_ds_version": __version__,
            "validation_files": {k: content_sha256(getattr(args, k)) for k in FILE_OPTIONS if getattr(args, k)}}


@releases_engines
def run_correct(run: RunDir | str, args: CorrectArgs, corpus: DataSpec, model_dir: str, ds_config_path: str,
                overwrite: bool = False) -> dict:
    """Post-train `model_dir` on the influential samples of `run`'s scores (replay drawn from `corpus`), under
    the DeepSpeed config `ds_config_path`; checkpoints in `run.checkpoints`. Returns the summary (also in
    `run.correct_summary`); a finished correction with the same inputs is reused, an unfinished one resumed."""
    problems = args.validate()
    if problems:
        raise ConfigError("; ".join(problems) + ".")
    run = RunDir.of(run)
    dist_utils.init_distributed()
    config = stage_config(run, args, corpus, model_dir)
    files = [corpus.path] + [getattr(args, k) for k in FILE_OPTIONS]
    fingerprint = stage_fingerprint(run.correct, config, inputs=files, run_root=run.root)
    if resumable(run.correct, run.correct_summary.name, fingerprint, config, overwrite, "correct"):
        return read_json(run.correct_summary)
    recipe = CorrectionRecipe(run, args, corpus, model_dir, ds_config_path)
    recipe.setup()
    result = {"fingerprint": fingerprint, **recipe.run()}
    recipe.cleanup()
    if dist_utils.is_main():
        write_json(run.correct_summary, result)
    dist_utils.barrier()
    say(f"correct: {args.method} done; checkpoints in {run.checkpoints} (export tag {result['export_tag']})")
    if result["best"] and result["best"]["step"] == 0:
        what = "validation harmful score" if args.criterion() == "harm" else "validation query log-prob"
        say(f"correct: warning: no checkpoint lowered the {what} within the perplexity bound; the 'best' "
            "checkpoint is the model before post-training. Try a smaller --lr, more --steps or a larger --max-ppl-increase.")
    return result
