"""One correction step's data and loss (DESIGN.md section 3), shared by the recipe (`ibo.recipe`) and the
step-time bench (`bench.steps`).

* `draw`: the step's correction pairs (z⁺, z⁻), each drawn within one query batch, and its neutral samples,
  from a generator seeded by (seed, step): the same on every rank, and the same after a resume.
* `step_loss`: one forward pass over this rank's share of the draw (pairs and neutral samples dealt
  round-robin over ranks), the terms of `ibo.objective`, and the method's total. Each term is its mean over
  the local items times the local share of the global count, so the sum over ranks is the global mean and
  the update does not depend on the world size.
* `local_pull_squares`: for the log, how hard each term of the objective pulls on the step's response tokens (the
  norm of its gradient with respect to their log-probs), so a log shows which term drives the update and
  when one falls silent (a saturated L_COR).
"""

from __future__ import annotations

import math

import random
from typing import TYPE_CHECKING

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.data.encoding import collate, padding_sample
from lancet_ds.data.records import EncodedSample
from lancet_ds.ibo.objective import (HUMAN_CORRECTION, bregman_loss, correction_loss, dpo_loss, log_ratio, nll,
                                     objective, pair_margin, saturation)
from lancet_ds.ibo.selection import Selection
from lancet_ds.losses import token_logprobs

if TYPE_CHECKING:
    from lancet_ds.ibo.correct import CorrectArgs

Member = tuple[str | None, float]  # (sample id, Ĩ); (None, 0.0) where a batch has no D⁻ (pbo, ga)
Pair = tuple[Member, Member]  # (z⁺, z⁻) of one query batch


def usable_batches(args: CorrectArgs, sel: Selection) -> list[int]:
    """Query batches pairs can be drawn from (IBO needs both sides in the batch)."""
    return [b for b in sorted(sel.positive) if sel.positive[b] and (sel.negative[b] or args.method != "ibo")]


def unpairable_reason(sel: Selection) -> str:
    """Why `usable_batches` found nothing for IBO, and what to do: scores with no negative side (`score --by
    tfidf` gives similarities, never negative) cannot feed Eq. 15's pairs at all; otherwise the batches' two
    sides just never meet."""
    if not sel.ids("negative") and not sel.barred:
        return ("no scored sample has a negative score, so IBO has nothing to pair with the positive ones (scores by "
                "TF-IDF similarity, `score --by tfidf`, are never negative); use --method pbo or ga on such scores, "
                "or influence scores for IBO.")
    return ("no query batch has both positive and negative samples to pair; try --selection pareto, a larger "
            "--top-k, " + (f"a higher --negative-ceiling (it kept {sel.barred} samples out of D⁻), "
                           if sel.barred else "") + "or --method pbo.")


CORRECTED, UNDESIRABLE, MISMATCH = "#corrected", "#undesirable", "#mismatch"
"""Suffixes of a correction's two encoded samples (`<query id>#corrected`, `<query id>#undesirable`) and of
llm_ul's random-mismatch sample (`<D⁺ id>#mismatch`: its prompt with a replayed sample's response)."""


def draw(step: int, args: CorrectArgs, sel: Selection, neutral: list[str],
         corrections: list[str] | None = None) -> tuple[list[Pair], list[str]]:
    """The pairs and the neutral (replay) sample ids of optimizer step `step` (0-based). For `sft_er` and
    `dpo_er` a pair is one of the user's `corrections` (query ids): (corrected, undesirable)."""
    rng = random.Random(args.seed * 1_000_003 + step)
    pairs = []
    if args.method in HUMAN_CORRECTION:
        for _ in range(args.pair_batch):
            q = rng.choice(corrections)
            pairs.append(((q + CORRECTED, 1.0), (q + UNDESIRABLE, -1.0)))
    else:
        usable = usable_batches(args, sel)
        for _ in range(args.pair_batch):
            b = rng.choice(usable)
            zp = rng.choice(sel.positive[b])
            zn = rng.choice(sel.negative[b]) if sel.negative[b] else (None, 0.0)
            pairs.append((zp, zn))
    return pairs, rng.sample(neutral, min(args.neutral_batch, len(neutral)))


def response_tokens(engine, ids: list[str], enc: dict[str, EncodedSample],
                    pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{id: the policy's log-probs of its response tokens} from one forward pass over `ids` (a fully masked
    sample when this rank has none, so every rank makes the pass), and the pass's per-token log-probs
    (batch × positions) that they are taken from."""
    batch = collate([enc[i] for i in ids] or [padding_sample(pad_id)], pad_id)
    device = dist_utils.device()
    out = engine(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    lp = token_logprobs(out.logits, batch["labels"].to(device))
    mask = batch["loss_mask"].to(device).bool()
    return {i: lp[j][mask[j]] for j, i in enumerate(ids)}, lp


def global_shares(*mine: int) -> list[float]:
    """Each local count over its sum over ranks (1 where the global count is 0)."""
    counts = dist_utils.all_reduce_sum(torch.tensor([float(m) for m in mine], dtype=torch.float64))
    return [float(m) / max(float(total), 1.0) for m, total in zip(mine, counts)]


def step_loss(engine, args: CorrectArgs, pairs: list[Pair], neutral_ids: list[str], enc: dict[str, EncodedSample],
              ref: dict[str, torch.Tensor], pad_id: int, likely: frozenset[str] | set[str] = frozenset(),
              term: str | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's share of the step's loss (scaled by the world size for DeepSpeed's mean over ranks) and
    the global value of each term for the log: {"L_COR" (DPO's loss for dpo_er), "L_BD", "NLL_pos" (of D⁺, or
    of the corrected responses for sft_er)}, "NLL_replay" for the human-correction baselines (for ibo with
    `neutral_likelihood`: of the drawn neutral samples in `likely`, those the positive judge passes),
    "NLL_mismatch" for llm_ul, for IBO the pair margins' statistics (`margin_stats`), and each term's pull on the
    response tokens ("pull_<term>", `local_pull_squares`). `ref` holds each sample's reference log-probs of its
    response tokens. With `term` (one of `method_terms`), the loss returned is that term's part of the objective
    alone (`term_part`), for `ibo.term_gradients`, and nothing is logged."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    my_pairs = pairs[rank::world]
    my_neutral = neutral_ids[rank::world] if args.method != "ga" else []
    mismatched = [p[0] + MISMATCH for p, _ in my_pairs] if args.method == "llm_ul" else []
    ids = [i for (p, n) in my_pairs for i in (p[0], n[0]) if i is not None] + my_neutral + mismatched
    tok, lp = response_tokens(engine, ids, enc, pad_id)
    zero = lp.sum() * 0  # a term with no local items: still on the graph
    device = dist_utils.device()
    pos_tok = [tok[p[0]] for p, _ in my_pairs]
    neu_tok, neu_ref = [tok[i] for i in my_neutral], [ref[i].to(device) for i in my_neutral]
    mis_tok = [tok[i] for i in mismatched]
    liking = args.method == "ibo" and args.neutral_likelihood > 0  # `neutral_likelihood`'s term is on
    liked = [tok[i] for i in my_neutral if i in likely] if liking else []
    share = global_shares(len(my_pairs), sum(t.numel() for t in neu_tok), sum(t.numel() for t in pos_tok),
                          sum(t.numel() for t in mis_tok), sum(t.numel() for t in liked))
    l_cor = l_bd = nll_pos = nll_replay = nll_mismatch = zero
    margins = torch.zeros(0, dtype=torch.float64)
    if args.method in ("ibo", "dpo_er") and my_pairs:
        r_pos = torch.stack([log_ratio(tok[p[0]], ref[p[0]]) for p, _ in my_pairs])
        r_neg = torch.stack([log_ratio(tok[n[0]], ref[n[0]]) for _, n in my_pairs])
        beta = args.margin_beta()
        if args.method == "dpo_er":  # the pair is (corrected, undesirable): chosen ≻ rejected
            l_cor = dpo_loss(r_pos, r_neg, beta) * share[0]
        else:
            i_pos = torch.tensor([p[1] for p, _ in my_pairs], device=device)
            i_neg = torch.tensor([n[1] for _, n in my_pairs], device=device)
            l_cor = correction_loss(r_pos, r_neg, i_pos, i_neg, args.epsilon, args.cor_form, beta) * share[0]
            margins = pair_margin(r_pos, r_neg, i_pos, i_neg, beta).detach().double().cpu()
    if args.method in ("pbo", "ga", "llm_ul", "sft_er") and pos_tok:
        nll_pos = samples_nll(pos_tok) * share[2]
    if mis_tok:
        nll_mismatch = samples_nll(mis_tok) * share[3]
    if neu_tok:
        if args.method in HUMAN_CORRECTION:  # experience replay: plain likelihood of training samples
            nll_replay = samples_nll(neu_tok) * share[1]
        else:
            neu = torch.cat(neu_tok)
            l_bd = bregman_loss(neu, torch.cat(neu_ref), torch.ones(neu.numel(), device=device)) * share[1]
    if liked:  # ibo's neutral likelihood: the judge-passed neutral samples, on top of L_BD
        nll_replay = samples_nll(liked) * share[4]
    parts = (l_cor, l_bd, nll_pos, nll_replay, nll_mismatch)  # in `TERMS` order
    weights = {"bd_weight": args.bd_weight, "likelihood_weight": args.neutral_likelihood}
    if term is not None:  # one term's part for `ibo.term_gradients`: nothing to log (every rank passes the same term)
        return term_part(args.method, parts, term, **weights) * world, {}
    loss = objective(args.method, *parts, **weights)
    pulled, squares = local_pull_squares(args.method, parts, lp, **weights)
    # one reduction for the terms' values and their pulls' squares
    total = dist_utils.all_reduce_sum(torch.tensor([float(t.detach()) for t in parts] + squares, dtype=torch.float64))
    logged = {name: float(total[k]) for k, name in enumerate(TERMS[:3])}
    if args.method in HUMAN_CORRECTION or liking:
        logged[TERMS[3]] = float(total[3])
    if args.method == "llm_ul":
        logged[TERMS[4]] = float(total[4])
    if args.method == "ibo":
        logged.update(margin_stats(margins, args.epsilon))
    logged.update({f"pull_{name}": math.sqrt(float(sq)) for name, sq in zip(pulled, total[len(parts):])})
    return loss * world, logged


def samples_nll(tokens: list[torch.Tensor]) -> torch.Tensor:
    """`objective.nll` over the response tokens of several samples (each sample's log-probs), pooled per token."""
    pooled = torch.cat(tokens)
    return nll(pooled, torch.ones_like(pooled))


TERMS = ("L_COR", "L_BD", "NLL_pos", "NLL_replay", "NLL_mismatch")
"""The terms of `ibo.objective.objective`, in its argument order (and their names in the log)."""

NONFINITE_STEPS = 3
"""Consecutive steps whose objective is not finite after which a correction stops (`nonfinite_terms`). Under
fp32 or bf16 a NaN or infinite loss leaves NaN weights that no later step repairs; under fp16 DeepSpeed skips a
step whose gradients overflow, so a single bad step is let through."""


def nonfinite_terms(entry: dict) -> list[str]:
    """The terms (`TERMS`) of one step's log entry whose value is NaN or infinite. The terms are reduced over the
    ranks before they are logged, so every rank reads the same answer."""
    return [name for name in TERMS if name in entry and not math.isfinite(entry[name])]


def term_part(method: str, terms: tuple[torch.Tensor | float, ...], name: str, bd_weight: float = 1.0,
              likelihood_weight: float = 0.0) -> torch.Tensor | float:
    """The part of `method`'s objective (`ibo.objective.objective`) that term `name` (of `TERMS`) makes, its weight
    and sign included, so the parts add up to the objective; `terms` are the terms' values in `TERMS` order. A float
    (0.0) when the method has no such term."""
    k = TERMS.index(name)
    return objective(method, *(t if j == k else 0.0 for j, t in enumerate(terms)), bd_weight=bd_weight,
                     likelihood_weight=likelihood_weight)


def method_terms(method: str, bd_weight: float = 1.0, likelihood_weight: float = 0.0) -> list[str]:
    """The terms (`TERMS`) of `method`'s objective: those whose part depends on its value."""
    probe = torch.zeros((), requires_grad=True)
    return [name for name in TERMS if torch.is_tensor(part := term_part(method, (probe,) * len(TERMS), name,
                                                                          bd_weight, likelihood_weight))
            and part.requires_grad]


def local_pull_squares(method: str, terms: tuple[torch.Tensor, ...], lp: torch.Tensor, bd_weight: float = 1.0,
                       likelihood_weight: float = 0.0) -> tuple[list[str], list[float]]:
    """Each term's pull, this rank's share: the names of `method`'s terms (`TERMS`) and, per term, the squared
    norm ‖∂c/∂log p‖² over this rank's tokens, c the term's part of the objective (its weight and sign included,
    so the parts add up to the objective) and log p the step's per-token log-probs `lp`. Summed over ranks and
    square-rooted, it is the logged "pull_<term>". Every term acts on the model through these log-probs alone,
    so the pulls compare the terms on one scale: an IBO log whose `pull_L_COR` falls to ~0 while `pull_L_BD`
    stays has a saturated correction term. The proximity term acts on the weights, not the tokens; its size is
    the logged `proximity` (λ/2)‖θ − θ_ref‖²."""
    names, squares = [], []
    for name in TERMS:
        part = term_part(method, terms, name, bd_weight, likelihood_weight)
        if not (torch.is_tensor(part) and part.requires_grad):
            continue  # not a term of this method (the same on every rank)
        (grad,) = torch.autograd.grad(part, lp, retain_graph=True, allow_unused=True)
        names.append(name)
        squares.append(0.0 if grad is None else float(grad.double().pow(2).sum()))
    return names, squares


U_QUANTILES = (0.1, 0.5, 0.9)
"""The pair margins' quantiles the log records per step (`u_p10`, `u_p50`, `u_p90`)."""


def margin_stats(u: torch.Tensor, epsilon: float) -> dict[str, float]:
    """The distribution of the step's pair margins u (Eq. 15) over all ranks, for the log: their mean, min, max and
    `U_QUANTILES` (linear interpolation between order statistics), and the share of pairs the bounded L_COR no
    longer moves (`objective.saturation`); `u` holds this rank's (maybe none; a step draws a few pairs per rank)."""
    every = torch.tensor([x for part in dist_utils.all_gather_object(u.detach().double().tolist()) for x in part],
                         dtype=torch.float64)
    if not every.numel():
        return {}
    quantiles = torch.quantile(every, torch.tensor(U_QUANTILES, dtype=torch.float64))
    return {"u_mean": float(every.mean()), "u_min": float(every.min()), "u_max": float(every.max()),
            **{f"u_p{round(100 * q)}": float(v) for q, v in zip(U_QUANTILES, quantiles)},
            "saturated_share": float(saturation(every, epsilon).double().mean())}