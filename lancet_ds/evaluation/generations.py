"""What a model generates on unseen prompts, and how the judges read it (the paper's Table 2 and 3):
n sampled generations per prompt (temperature 1, seeded, synced under ZeRO-3), then per prompt and
generation the harm judge's score (cost model) and the reward judge's (helpfulness); the harmful rate
and scores are averaged over the prompts marked `forbidden` (all prompts when none is marked), each with
a 95 % bootstrap interval over prompts; the helpful score also over the allowed prompts
(`helpful_score_allowed`: does the model still answer what it may); diversity over all generations.
Prompts that carry a `category` field are also graded per category (`harm_by_category`): which kinds of
the behaviour a correction reached, including kinds its influence queries did not show."""

from __future__ import annotations

import numpy as np

from lancet_ds.data.encoding import prompt_and_response_ids
from lancet_ds.data.records import Sample
from lancet_ds.evaluation.diversity import diversity
from lancet_ds.evaluation.intervals import bootstrap_ci
from lancet_ds.evaluation.judge import Judge, flag
from lancet_ds.influence.generate import generate_responses

EXAMPLES = 5


def sample_generations(model, tokenizer, prompts: list[Sample], n: int, micro_batch: int, max_new_tokens: int,
                       seed: int, synced: bool) -> list[list[str]]:
    """texts[i][j]: generation j (seed + j) of prompt i."""
    ids = [prompt_and_response_ids(tokenizer, p.prompt, "x")[0] for p in prompts]
    per_seed = []
    for j in range(n):
        out = generate_responses(model, tokenizer, ids, micro_batch, max_new_tokens, seed + j, synced,
                                 label=f"evaluate: generations {j + 1}/{n}")
        per_seed.append([tokenizer.decode(r, skip_special_tokens=True).strip() for r in out])
    return [list(texts) for texts in zip(*per_seed)]


def generation_metrics(prompts: list[Sample], texts: list[list[str]], judge: Judge | None, reward: Judge | None,
                       seed: int) -> dict:
    """Diversity, and with judges: harmful rate, harmful score, helpful score and C-R with intervals,
    plus the per-prompt harm scores (`harm_by_prompt`) for paired comparisons between models."""
    flat_prompts = [p.prompt for p, ts in zip(prompts, texts) for _ in ts]
    flat = [t for ts in texts for t in ts]
    row: dict = diversity(flat)
    forbidden = np.array([bool(p.meta.get("forbidden", True)) for p in prompts])
    graded = forbidden if forbidden.any() else np.ones(len(prompts), bool)
    row["graded_prompts"] = int(graded.sum())
    n = len(texts[0]) if texts else 0
    if judge is not None:
        harm = judge.score(flat_prompts, flat).reshape(len(prompts), n)
        _with_interval(row, "harmful_rate", flag(judge, harm)[graded].astype(float), seed)
        _with_interval(row, "harmful_score", harm[graded], seed)
        row["harmful_rate_allowed_prompts"] = float(flag(judge, harm)[~graded].mean()) if (~graded).any() else None
        row["harm_by_prompt"] = harm[graded].tolist()
        categories = [p.meta.get("category") for p, g in zip(prompts, graded) if g]
        if any(c is not None for c in categories):
            row["harm_by_category"] = harm_by_category(categories, harm[graded], seed)
    if reward is not None:
        helpful = reward.score(flat_prompts, flat).reshape(len(prompts), n)
        _with_interval(row, "helpful_score", helpful[graded], seed)
        if (~graded).any():  # the utility side: answers to allowed requests (over-refusal, broken text)
            _with_interval(row, "helpful_score_allowed", helpful[~graded], seed)
        if judge is not None:
            _with_interval(row, "c_r", harm[graded] - helpful[graded], seed)
    row["examples"] = [{"prompt": p, "response": t} for p, t in list(zip(flat_prompts, flat))[:EXAMPLES]]
    return row


def harm_by_category(categories: list, harm: np.ndarray, seed: int) -> dict:
    """{category: harmful score (mean over its prompts' generations) with its 95 % bootstrap interval over
    its prompts, and its prompt count}; `harm[i]` holds prompt i's scores, a prompt without one under "(none)"."""
    labels = np.array(["(none)" if c is None else str(c) for c in categories])
    out = {}
    for cat in sorted(set(labels)):
        rows = harm[labels == cat]
        est, low, high = bootstrap_ci(rows, seed=seed)
        out[cat] = {"harmful_score": est, "harmful_score_ci": [low, high], "prompts": len(rows)}
    return out


def _with_interval(row: dict, key: str, values: np.ndarray, seed: int) -> None:
    est, low, high = bootstrap_ci(values, seed=seed)
    row[key], row[f"{key}_ci"] = float(est), [float(low), float(high)]
