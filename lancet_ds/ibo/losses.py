"""The IBO objective and its baselines (DESIGN.md section 3, Eq. 14–17, Appendix A.1), on per-sample and
per-token log-probabilities; all in fp32 at least, whatever the model's dtype.

* r(z) = log π_θ(y|x) − log π_ref(y|x), sequence sums over response tokens.
* u = Ĩ(z⁺) r(z⁺) + Ĩ(z⁻) r(z⁻) for a pair drawn within one query batch.
* L_COR = −mean log σ(ε·u) with ε = −1 (form `dpo`, the default: bounded, its gradient fades once the
  pair is corrected); form `paper` is the literal −ε·log σ(u), unbounded below for ε = −1.
* L_BD = mean over neutral response tokens of exp(Δ_t) − Δ_t − 1, Δ_t = log p_θ(y_t) − log p_ref(y_t)
  (the Bregman divergence of exp; 0 with zero gradient when the policy equals the reference).
* Proximity: (λ_prox/2)‖θ − θ_ref‖².
* PBO (Bae et al. 2022, Eq. 4): L_BD(neutral) − NLL(D⁺) + proximity; GA: −NLL(D⁺).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

COR_FORMS = ("dpo", "paper")


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def correction_loss(r_pos: torch.Tensor, r_neg: torch.Tensor, i_pos: torch.Tensor, i_neg: torch.Tensor,
                    epsilon: float = -1.0, form: str = "dpo") -> torch.Tensor:
    """L_COR over pairs (Eq. 15), from the pairs' log-ratios r and normalised influences Ĩ."""
    u = _f32(i_pos) * _f32(r_pos) + _f32(i_neg) * _f32(r_neg)
    if form == "dpo":
        return -F.logsigmoid(epsilon * u).mean()
    if form == "paper":
        return (-epsilon * F.logsigmoid(u)).mean()
    raise ValueError(f"cor_form must be one of {COR_FORMS}, got {form!r}")


def bregman_loss(policy_token_logprobs: torch.Tensor, ref_token_logprobs: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
    """L_BD (Appendix A.1): mean over masked tokens of exp(Δ) − Δ − 1, Δ = log p_θ − log p_ref."""
    delta = _f32(policy_token_logprobs) - _f32(ref_token_logprobs)
    m = mask.to(delta.dtype)
    per_token = (torch.exp(delta) - delta - 1.0) * m
    return per_token.sum() / m.sum().clamp_min(1.0)


def proximity_loss(params: Iterable[torch.Tensor], ref_params: Iterable[torch.Tensor], lam: float) -> torch.Tensor:
    """(λ_prox/2)‖θ − θ_ref‖² over matching tensors (each rank passes its own partitions)."""
    total = None
    for p, q in zip(params, ref_params):
        term = (_f32(p) - _f32(q).to(p.device)).pow(2).sum()
        total = term if total is None else total + term
    return 0.5 * lam * total if total is not None else torch.zeros(())


def nll(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token negative log-likelihood over masked tokens."""
    m = mask.to(torch.float32)
    return -(_f32(token_logprobs) * m).sum() / m.sum().clamp_min(1.0)
