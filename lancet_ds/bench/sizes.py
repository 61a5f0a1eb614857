"""The two bench presets: `quick` (a CI smoke test, a few minutes on 2 CPU cores) and `full` (hidden ≥ 1024,
MLP 4× hidden, a larger corpus and world, 3 seeds in the correction table)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

CORRECTIONS = ("linfac+ibo", "linfac+ibo_paper", "linfac+ibo_pareto", "linfac_single+ibo", "ekfac+ibo", "identity+ibo",
               "linfac+pbo", "ekfac+pbo", "tfidf+pbo", "linfac+ga", "tfidf+ga", "linfac+llm_ul", "sft_er", "dpo_er")
"""Every correction the quality suite can run: `<recall>+<method>` (recall: linfac, ekfac, identity, or tfidf: the
paper's GA and PBO post-train on TF-IDF recall of the same size; linfac_single: one query per batch, the paper's
Table 6), or a human-correction baseline alone. `ibo_paper` and `ibo_pareto` are IBO with one option changed
(`METHOD_VARIANTS`): L_COR as the paper prints Eq. 15, and the per-batch Pareto selection (DESIGN.md section 3)."""

METHOD_VARIANTS = {"ibo_paper": ("ibo", {"cor_form": "paper"}), "ibo_pareto": ("ibo", {"selection": "pareto"})}
"""A correction's method name that is another method with options changed: (the `correct --method`, its options)."""

KIND_SHARE = {"without": "behaviour_removed", "only": "behaviour_alone"}
"""The counterfactual's kind modes (`bench.counterfactual.by_kind`: retrain without the kind, or with it as the only
contamination) and the name of each one's share of the impure → safe gap."""


@dataclass(frozen=True)
class BenchSize:
    # speed: a random-initialised Llama and fixed-length random-token sequences
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    seq_len: int
    fit_sequences: int
    queries: int
    candidates: int
    micro_batch: int
    # TF-IDF: synthetic 60-word documents, N and 10N, 100 queries, top-100
    tfidf_docs: int
    # IBO vs SFT: optimizer steps timed for each (after one warm-up step)
    train_steps: int
    # quality: demo-world size, correction seeds, generations per prompt in the evaluation
    world: str
    seeds: int
    eval_n: int
    eval_max_new_tokens: int
    counterfactual_methods: tuple[str, ...]
    counterfactual_kinds: tuple[str, ...]  # of KIND_SHARE's modes: retrains without / with only each
    # contaminated kind (none in quick: 4 more retrains, ~90 s on 2 cores, for what its unit test already checks)
    corrections: tuple[str, ...]  # bench.quality.CORRECTIONS, or the share of them CI can afford
    strengths: int  # points (step counts) along each correction, for the matched-utility comparison
    checks_per_strength: int  # validations (the kept checkpoint's choice) between two strengths (quick: on the tiny
    # world's 30 steps, validated at 15 and 30 only, IBO's perplexity bound passed the plan's guard at both, so its
    # row was the impure model; validated every 5 it keeps step 5, measured in session 51 of issue 14)
    lr_scales: tuple[float, ...]  # learning rates (× the plan's) each correction runs at; validation chooses
    # scale: random Llamas of these widths and depth, on these world sizes (replicated and sharded IHVPs while
    # scoring), + one budget-partitioned, sharded 2-rank run
    scale_widths: tuple[int, ...] = (64,)
    scale_ranks: tuple[int, ...] = (1, 2, 4)
    scale_layers: int = 8

    def as_dict(self) -> dict:
        return asdict(self)


SIZES = {
    "quick": BenchSize(hidden=128, intermediate=512, layers=2, heads=4, vocab=512, seq_len=64, fit_sequences=48,
                       queries=4, candidates=48, micro_batch=8, tfidf_docs=2000, train_steps=3, world="tiny",
                       seeds=1, eval_n=1, eval_max_new_tokens=32, counterfactual_methods=("linfac",),
                       counterfactual_kinds=(),
                       corrections=("linfac+ibo", "dpo_er"), strengths=3, checks_per_strength=2, lr_scales=(1.0,),
                       scale_widths=(64,), scale_ranks=(1, 4)),
    "full": BenchSize(hidden=1024, intermediate=4096, layers=4, heads=8, vocab=2048, seq_len=128, fit_sequences=64,
                      queries=10, candidates=200, micro_batch=8, tfidf_docs=20000, train_steps=5, world="default",
                      seeds=3, eval_n=1, eval_max_new_tokens=64, counterfactual_methods=("linfac", "tfidf", "random"),
                      counterfactual_kinds=("without", "only"),
                      corrections=CORRECTIONS, strengths=3, checks_per_strength=3, lr_scales=(0.2, 1.0),
                      scale_widths=(128, 256)),
}
