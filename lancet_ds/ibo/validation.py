"""Checkpoint choice during post-training, on the validation data only (DESIGN.md section 9): the data
that chooses the checkpoint never grades it, and the influence queries never choose it.

Criterion `logprob`: the mean per-token log-prob of the validation queries' undesirable responses
(lower is better). Criterion `harm`: the mean harmful score of sampled generations on the validation
prompts marked `forbidden` (the paper's choice: it keeps the checkpoint by its validation cost), with
seeds fixed across validations so checkpoints are compared on the same draws. Either way a checkpoint
qualifies only while the perplexity on the validation clean set stays within the bound, with confidence:
the one-sided upper bound of its ratio to step 0's (a paired bootstrap over the clean samples), since a
correction's damage to clean text can sit in a few samples the validation set has few of. Each
validation also measures the influence queries' log-prob, for the log and the export's check.
"""

from __future__ import annotations

import math

import numpy as np

from lancet_ds import distributed as dist_utils
from lancet_ds.data.bad_records import strict_sink
from lancet_ds.data.corpus import iter_samples, load_encoded
from lancet_ds.data.records import EncodedSample
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.evaluation.generations import sample_generations
from lancet_ds.evaluation.intervals import perplexity_ratio_ci
from lancet_ds.evaluation.judge import load_judge
from lancet_ds.logprobs import response_logprobs
from lancet_ds.modeling import zero_stage

MICRO_BATCH = 8
CRITERION_KEY = {"logprob": "validation_logprob_per_token", "harm": "validation_harmful_score"}


class Validator:
    """The validation data of a correction, encoded once; `measure(model)` on every rank."""

    def __init__(self, args, tokenizer, influence_queries: list[EncodedSample], ds_config: dict):
        self.args, self.tokenizer, self.pad_id = args, tokenizer, tokenizer.pad_token_id
        self.criterion = args.criterion()
        self.influence = influence_queries
        self.synced = dist_utils.world_size() > 1 and zero_stage(ds_config) == 3
        read = lambda path: load_encoded(path, SchemaSpec(), tokenizer, args.max_length, strict_sink())[1]  # noqa: E731
        self.queries = read(args.validation_queries) if args.validation_queries else []
        self.clean = read(args.validation_clean) if args.validation_clean else []
        self.prompts, self.judge = [], None
        self.base: list[float] | None = None  # step 0's per-sample clean log-probs (saved with each checkpoint)
        if self.criterion == "harm":
            self.prompts = list(iter_samples(args.validation_prompts, SchemaSpec(response_field="prompt"),
                                             strict_sink()))
            self.judge = load_judge(args.validation_judge, kind="harm", label=args.validation_judge_label)

    def measure(self, model) -> dict:
        """{"value": the criterion (lower is better), its named figure, the clean perplexity, the influence
        queries' log-prob}."""
        row = {"query_logprob_per_token": self._logprob(model, self.influence)}
        if not math.isfinite(row["query_logprob_per_token"]):  # NaN weights: sampling answers from them fails,
            return {**row, "value": math.inf}  # and no checkpoint is kept from them (the recipe stops the run)
        if self.queries:
            row["validation_logprob_per_token"] = self._logprob(model, self.queries)
        if self.criterion == "harm":
            row["validation_harmful_score"] = self._harm(model)
        if self.clean:
            row.update(self._clean_perplexity(model))
        row["value"] = row[CRITERION_KEY[self.criterion]]
        return row

    def _clean_perplexity(self, model) -> dict:
        """The clean perplexity and its ratio to the first measured model's (step 0: `base`, the guard's
        reference) on the same samples, with the ratio's one-sided upper bound at `ppl_guard_level`."""
        s, c = response_logprobs(model, self.clean, self.pad_id, MICRO_BATCH)
        if self.base is None:
            self.base = s.tolist()
        row = {"clean_perplexity": math.exp(-float(s.sum() / c.sum()))}
        level = self.args.ppl_guard_level  # one-sided at g: the upper end of the two-sided 2g − 1 interval
        ratio, _, upper = perplexity_ratio_ci(self.base, s, c, max(0.0, 2 * level - 1), seed=self.args.seed)
        return {**row, "clean_ppl_ratio": ratio, **({"clean_ppl_ratio_upper": upper} if level else {})}

    def within_guard(self, row: dict) -> bool:
        """Whether a validation row keeps the utility guard: the clean perplexity ratio (its upper bound when
        `ppl_guard_level` > 0) within 1 + `max_ppl_increase`; no clean set, no guard."""
        if "clean_ppl_ratio" not in row:
            return True
        return row.get("clean_ppl_ratio_upper", row["clean_ppl_ratio"]) <= 1 + self.args.max_ppl_increase

    def _logprob(self, model, samples: list[EncodedSample]) -> float:
        s, c = response_logprobs(model, samples, self.pad_id, MICRO_BATCH)
        return float(s.sum() / c.sum())

    def _harm(self, model) -> float:
        a = self.args
        texts = sample_generations(model, self.tokenizer, self.prompts, a.validation_n, MICRO_BATCH,
                                   a.validation_max_new_tokens, a.seed, self.synced)
        graded = [i for i, p in enumerate(self.prompts) if p.meta.get("forbidden", True)] or list(range(len(texts)))
        prompts = [self.prompts[i].prompt for i in graded for _ in texts[i]]
        scores = self.judge.score(prompts, [t for i in graded for t in texts[i]])
        return float(np.mean(scores))
