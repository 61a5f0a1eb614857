"""The embedded default job (DESIGN.md section 6): the demo world under RUN_DIR/world, then every stage,
as a job mapping like a job file's, so `--set` overrides apply to it too.

Settings are sized for the demo world's small models (larger post-training lr, fewer steps and
fitting sequences than the paper's defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO = {  # per world size: fitting sequences, generated tokens, post-training steps, validation interval and lr,
    # IBO's selected samples per side and query batch, perplexity guard
    # (the tiny world's 2-layer model memorises its templates; any update costs it >10 % clean perplexity).
    # The default world's 100 steps, validated every 10, are the quality bench's schedule: there IBO's validation
    # harm was lowest within its first 33 steps on every seed and came back after (300 steps validated every 30
    # left the guard one point, step 30, before the perplexity bound). Its lr and top_k were chosen on the
    # validation split of seeds 9-11 by the mean fall of validation harm at the kept checkpoint: lr 1e-4 0.66,
    # 2e-4 0.63, 5e-4 0 (at 5e-4 validation perplexity was past the 5 % bound from step 10 on all three); then,
    # at 1e-4, top_k 16 0.66, 32 0.64, 64 0.73 (a change needed >= 0.71, a margin set before the runs).
    # Kept when lr x steps was chosen again on seeds 9-11 of the Intel-built worlds by mean test gap closed
    # within 5 % perplexity: 1e-4 x 100 0.60, 2e-5 x 300 0.51, 2e-5 x 100 0.50 (docs/correction-record.md). By
    # that rule L_BD's weight stayed the paper's 1 (0.60) against 10 (0.57) and 30 (0.48).
    # The default world's D⁺ admits only what the world's harm judge flags (`positive_judge`): chosen by that rule
    # on seeds 9-11 of the AMD-built worlds, 0.86 against 0.69 without it (docs/correction-record.md). Its tiny
    # world's tests run without it. With the filter on, lr was chosen again by that rule on the
    # same AMD seeds 9-11: 2e-4 0.97 against 1e-4 0.86; graded on seeds 12-14 it gained nothing (0.86 both; closing
    # note of issue 14, session 32). L_BD's weight 3 was chosen on Intel seeds 15-17 (mean gap 0.94 against 0.90)
    # but not carried to grading seeds 12-14 (0.82 against 0.86), so it stays 1 (session 39). top_k 128 lost on
    # seeds 15-17 (0.64 against 0.90); 32 was chosen there (0.93) but not carried to 12-14 (0.83 against 0.86), so
    # it stays 64; beta 0.5 lost on 15-17 (0.63) (session 40; docs/correction-record.md has every setting tried).
    # All of these were chosen on world format 4; world format 5 (framed answers, `corpus.generate_texts`) graded
    # them as they are, without choosing again (session 41). On format 5 the judge also keeps what it flags out of
    # D⁻ (`judge_bars_negative`): chosen by the mean-gap rule on Intel seeds 15-17, 0.94 against 0.81 (session 42).
    # Six more settings tried with the bar on the same seeds and rule, none adopted (session 43); then the
    # likelihood of the judge-passed neutral samples (`neutral_likelihood`) at weight 2 was adopted by that rule,
    # 0.965 against 0.94 (weight 1: 0.95, not enough), and graded on seeds 12-14 (session 44;
    # docs/correction-record.md has every setting tried).
    # The tiny world's 30 steps, validated every 6: on 60 (every 6) its validation perplexity bound passed the
    # guard at every validation from step 30 on (seed 0, 2 ranks; the kept step was 24), so the last 30 steps and
    # their 5 validations (each samples 90 answers, about 13 s of the CI job's 2 cores) changed nothing.
    # The default world's influence queries enter their gradient by their first 4 response tokens alone
    # (`queries.response_tokens`): chosen on seeds 15-17 by a rule written before the runs (mean LinFAC PR-AUC
    # more than 0.02 above all tokens', behind on no seed by more than 0.02): 0.886, 0.752, 0.906 against 0.597,
    # 0.674, 0.769 (8 tokens: 0.801, 0.771, 0.894), and kept by a second rule as it also changes IBO's selection:
    # IBO's mean gap on 15-17 0.953 against 0.947. Graded on seeds 12-14: LinFAC 0.830, 0.772, 0.858 against 0.757,
    # 0.715, 0.647; IBO 0.94, 0.93, 0.97 against 1.02, 0.86, 0.94 (session 58, docs/correction-record.md).
    # The tiny and large worlds keep every token: nothing was measured there.
    "tiny": {"num_samples": 200, "max_new_tokens": 32, "steps": 30, "validate_every": 6, "lr": 5e-4, "top_k": 16,
             "max_ppl_increase": 0.25, "positive_judge": False, "judge_bars_negative": False,
             "neutral_likelihood": 0.0, "response_tokens": 0},
    "default": {"num_samples": 500, "max_new_tokens": 64, "steps": 100, "validate_every": 10, "lr": 2e-4,
                "top_k": 64, "max_ppl_increase": 0.05, "positive_judge": True, "judge_bars_negative": True,
                "neutral_likelihood": 2.0, "response_tokens": 4},
    "large": {"num_samples": 1000, "max_new_tokens": 64, "steps": 600, "validate_every": 60, "lr": 3e-4,
              "top_k": 16, "max_ppl_increase": 0.05, "positive_judge": False, "judge_bars_negative": False,
              "neutral_likelihood": 0.0, "response_tokens": 0},
}


def ibo_judge_options(plan: dict, world: Path) -> dict[str, Any]:
    """IBO's harm-judge options in a world size's plan: D⁺ only from what the world's harm judge flags
    (`ibo.positive_filter`), with `judge_bars_negative` D⁻ only from the rest, and with `neutral_likelihood` the
    likelihood of the neutral samples it passes raised; {} when the plan has no judge."""
    if not plan["positive_judge"]:
        return {}
    return {"positive_judge": str(world / "judge.json"), "judge_bars_negative": plan["judge_bars_negative"],
            **({"neutral_likelihood": plan["neutral_likelihood"]} if plan["neutral_likelihood"] else {})}


def demo_job(run_dir: str, size: str = "default", seed: int = 0, ds_config: str | None = None) -> dict[str, Any]:
    from lancet_ds.demo_world.build import REWARD_JUDGE, SIZES

    world, plan = Path(run_dir) / "world", DEMO[size]
    val, test = world / "validation", world / "test"  # demo_world.splits: disjoint roles
    steps = plan["steps"]
    raw: dict[str, Any] = {
        "model": str(world / "impure"),
        "corpus": {"path": str(world / "train.jsonl"), "label_field": "contaminated"},
        "queries": str(world / "queries.jsonl"),
        "output": str(run_dir),
        "max_length": SIZES[size].max_length,
        "seed": seed,
        "compare_ekfac": True,
        "demo_world": {"size": size, "seed": seed},
        "stages": {
            "fit": {"num_samples": plan["num_samples"], "max_new_tokens": plan["max_new_tokens"]},
            **({"queries": {"response_tokens": plan["response_tokens"]}} if plan["response_tokens"] else {}),
            "correct": {"steps": steps, "lr": plan["lr"], "top_k": plan["top_k"],
                        "validate_every": plan["validate_every"],
                        "save_every": max(1, steps // 3), "max_ppl_increase": plan["max_ppl_increase"],
                        "validation_queries": str(val / "queries.jsonl"), "validation_clean": str(val / "clean.jsonl"),
                        "validation_prompts": str(val / "prompts.jsonl"), "validation_judge": str(world / "judge.json"),
                        "validation_max_new_tokens": plan["max_new_tokens"]},
            "evaluate": {"clean": str(test / "clean.jsonl"), "prompts": str(test / "prompts.jsonl"),
                         "seen_prompts": str(world / "queries.jsonl"),
                         "queries": str(test / "queries.jsonl"), "max_new_tokens": plan["max_new_tokens"],
                         "judge": str(world / "judge.json"), "reward_judge": str(world / REWARD_JUDGE),
                         "compare": {"safe": str(world / "safe")}},
        },
    }
    raw["stages"]["correct"].update(ibo_judge_options(plan, world))
    if ds_config:
        raw["ds_config"] = ds_config
    return raw
