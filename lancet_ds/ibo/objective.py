"""The IBO objective and its baselines (DESIGN.md section 3): one plain function per equation of the paper,
on per-sample and per-token log-probabilities, all in fp32 at least whatever the model's dtype. The recipe
(`ibo.recipe`) calls these and nothing else for the maths.

* `log_ratio`        r(z) = log π_θ(y|x) − log π_ref(y|x), sequence sums over response tokens (Eq. 14–15).
* `pair_margin`      u = β(Ĩ(z⁺) r(z⁺) + Ĩ(z⁻) r(z⁻)), a pair drawn within one query batch (Eq. 15; β = 1 there).
* `saturation`       which pairs the bounded L_COR no longer moves (gradient weight σ(−ε·u) < 0.01).
* `correction_loss`  L_COR (Eq. 15): −mean log σ(ε·u), form `dpo` (default: bounded, its gradient fades once
                     the pair is corrected); form `paper`, the literal −ε·log σ(u), unbounded below for ε = −1.
* `bregman_loss`     L_BD (Eq. 16, per token as in Appendix A.1): mean over neutral response tokens of
                     exp(Δ_t) − Δ_t − 1, Δ_t = log p_θ(y_t) − log p_ref(y_t); 0 with zero gradient at θ_ref.
* `proximity`        (λ/2)‖θ − θ_ref‖² and its gradient λ(θ − θ_ref) (Eq. 17's regulariser, Eq. 4's for PBO),
                     for one tensor pair: `ReferencePartitions.add_gradient` calls it on each partition.
* `nll`              mean per-token negative log-likelihood (the PBO, GA and SFT baselines, and replay).
* `dpo_loss`         DPO (Rafailov et al. 2023): −mean log σ(β(r(chosen) − r(rejected))), the `dpo_er` baseline.
* `objective`        the per-method total: Eq. 17 for `ibo` (w·L_BD + L_COR, + μ·NLL of judge-passed neutral
                     samples with `correct --neutral-likelihood`), Eq. 4 (PBO, Bae et al. 2022) for
                     `pbo` (w·L_BD − NLL(D⁺)), `ga` (−NLL(D⁺)), `llm_ul` (Yao et al. 2024), and the paper's
                     human-correction baselines with experience replay, `sft_er` (NLL(corrected) + NLL(replay))
                     and `dpo_er` (DPO(corrected ≻ undesirable) + NLL(replay)); proximity is added as a gradient
                     (ibo, pbo), not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("ibo", "pbo", "ga", "llm_ul", "sft_er", "dpo_er")
HUMAN_CORRECTION = ("sft_er", "dpo_er")
"""Methods that train on the user's corrected responses (the queries' `corrected_response`), not on recall."""
DPO_ER_BETA = 0.1
"""dpo_er's default β: DPO's usual value (TRL's default). At β = 1, on the demo world's hard format at lr 5e-4,
the loss on whole-response log-ratios is below 1e-6 by step 5 and only the replay term acts after that."""
REPLAY_ONLY = HUMAN_CORRECTION + ("llm_ul",)
"""Methods whose normal data is the replayed training sample alone (not IBO's near-zero-influence set)."""
WITH_PROXIMITY = ("ibo", "pbo")
LLM_UL_WEIGHTS = {"forget": 0.5, "mismatch": 1.0, "normal": 1.0}
"""Yao et al. 2024's weights (their code's defaults: bad 0.5, random 1, normal 1)."""
COR_FORMS = ("dpo", "paper")


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def log_ratio(policy_token_logprobs: torch.Tensor, ref_token_logprobs: torch.Tensor) -> torch.Tensor:
    """r(z) of Eq. 14–15: log π_θ(y|x) − log π_ref(y|x), the sums over one sample's response tokens of the
    policy's and the reference's per-token log-probs (a scalar on the policy's device)."""
    return _f32(policy_token_logprobs).sum() - _f32(ref_token_logprobs).sum().to(policy_token_logprobs.device)


def pair_margin(r_pos: torch.Tensor, r_neg: torch.Tensor, i_pos: torch.Tensor, i_neg: torch.Tensor,
                beta: float = 1.0) -> torch.Tensor:
    """u of Eq. 15 per pair: β·(Ĩ(z⁺) r(z⁺) + Ĩ(z⁻) r(z⁻)), with Ĩ the pair's query batch's normalised
    influences and β a temperature on the log-ratios (DPO's β; the paper has β = 1 and lets |Ĩ| ≤ 1 scale
    each pair: β multiplies every pair alike, Ĩ weighs one against another)."""
    return beta * (_f32(i_pos) * _f32(r_pos) + _f32(i_neg) * _f32(r_neg))


def saturation(u: torch.Tensor, epsilon: float = -1.0) -> torch.Tensor:
    """Per pair, whether L_COR's `dpo` form no longer moves it: its gradient weight σ(−ε·u) is below 0.01
    (the pair is corrected as far as the bounded loss cares). Meaningful for the `dpo` form only."""
    return torch.sigmoid(-epsilon * _f32(u)) < 0.01


def correction_loss(r_pos: torch.Tensor, r_neg: torch.Tensor, i_pos: torch.Tensor, i_neg: torch.Tensor,
                    epsilon: float = -1.0, form: str = "dpo", beta: float = 1.0) -> torch.Tensor:
    """L_COR over pairs (Eq. 15), from the pairs' log-ratios r and normalised influences Ĩ:
    `dpo` −mean log σ(ε·u); `paper` mean −ε·log σ(u) (the equation as printed); u = `pair_margin`."""
    u = pair_margin(r_pos, r_neg, i_pos, i_neg, beta)
    if form == "dpo":
        return -F.logsigmoid(epsilon * u).mean()
    if form == "paper":
        return (-epsilon * F.logsigmoid(u)).mean()
    raise ValueError(f"cor_form must be one of {COR_FORMS}, got {form!r}")


def bregman_loss(policy_token_logprobs: torch.Tensor, ref_token_logprobs: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
    """L_BD (Eq. 16, per token as in Appendix A.1): mean over masked tokens of exp(Δ) − Δ − 1,
    Δ = log p_θ − log p_ref."""
    delta = _f32(policy_token_logprobs) - _f32(ref_token_logprobs)
    m = mask.to(delta.dtype)
    per_token = (torch.exp(delta) - delta - 1.0) * m
    return per_token.sum() / m.sum().clamp_min(1.0)


def proximity(theta: torch.Tensor, theta_ref: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The proximity regulariser of Eq. 17 (and of PBO's Eq. 4) for one tensor pair (a whole parameter, or one
    rank's partition of it): the value (λ/2)‖θ − θ_ref‖² (float64 scalar, on θ's device) and its gradient
    λ(θ − θ_ref) (fp32, θ's shape and device). θ_ref may live on another device (CPU)."""
    diff = theta.float() - theta_ref.float().to(theta.device)
    return 0.5 * lam * diff.double().pow(2).sum(), lam * diff


def nll(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token negative log-likelihood over masked tokens (NLL(D⁺) of PBO and GA)."""
    m = mask.to(torch.float32)
    return -(_f32(token_logprobs) * m).sum() / m.sum().clamp_min(1.0)


def dpo_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) over pairs: −mean log σ(β(r(chosen) − r(rejected))), r the log-ratios to the
    reference (`log_ratio`)."""
    return -F.logsigmoid(beta * (_f32(r_chosen) - _f32(r_rejected))).mean()


def objective(method: str, l_cor: torch.Tensor, l_bd: torch.Tensor, nll_pos: torch.Tensor,
              nll_replay: torch.Tensor | float = 0.0, nll_mismatch: torch.Tensor | float = 0.0,
              bd_weight: float = 1.0, likelihood_weight: float = 0.0) -> torch.Tensor:
    """The loss a method minimises, without the proximity term (added as a gradient by `ReferencePartitions`):
    `ibo`     L_IBO of Eq. 17: w·L_BD + L_COR (w = `bd_weight`; the paper's is 1), plus μ·`nll_replay` when
              μ = `likelihood_weight` > 0 (the NLL of the neutral samples a harm judge passes, not in the paper);
    `pbo`     PBO (the paper's Eq. 4, Bae et al. 2022, with ε = −1 on D⁺): w·L_BD − NLL(D⁺);
    `ga`      gradient ascent on D⁺: −NLL(D⁺);
    `llm_ul`  Yao et al. 2024: −w·NLL(D⁺) (gradient ascent on the harmful samples) + NLL of D⁺'s prompts paired
              with random normal answers (`nll_mismatch`) + KL(π_ref ‖ π_θ) on normal data, estimated per token
              on the replayed samples' own tokens by L_BD (exp(Δ) − Δ − 1 is Schulman's k3 estimator of that
              KL when the tokens are π_ref's); weights `LLM_UL_WEIGHTS`;
    `sft_er`  NLL of the corrected responses (`nll_pos`) + NLL of the replayed training samples;
    `dpo_er`  DPO of corrected ≻ undesirable (`l_cor`) + NLL of the replayed training samples."""
    if method == "ibo":
        loss = bd_weight * l_bd + l_cor
        return loss + likelihood_weight * nll_replay if likelihood_weight else loss
    if method == "pbo":
        return bd_weight * l_bd - nll_pos
    if method == "ga":
        return -nll_pos
    if method == "llm_ul":
        w = LLM_UL_WEIGHTS
        return -w["forget"] * nll_pos + w["mismatch"] * nll_mismatch + w["normal"] * l_bd
    if method == "sft_er":
        return nll_pos + nll_replay
    if method == "dpo_er":
        return l_cor + nll_replay
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
