"""Inverse-Hessian-vector products in the Kronecker eigenbasis (DESIGN.md section 3, Eq. 12–13).

With vec stacking columns, (Â⊗Ŝ) vec(V) = vec(Ŝ V Âᵀ), so for V ∈ R^{P×M}
    IHVP(V) = Q_S [ (Q_Sᵀ V Q_A) ⊘ (λ_S λ_Aᵀ + λ) ] Q_Aᵀ,
i.e. the solution X of (Â⊗Ŝ + λI) vec(X) = vec(V). With eigenvalue correction the diagonal λ_S λ_Aᵀ is
replaced by Λ̂. (The paper prints the product as Â⁻¹(·)Ŝ⁻¹; for V of shape P×M the consistent order
is Ŝ⁻¹ V Â⁻¹.)
"""

from __future__ import annotations

import torch

from lancet_ds.influence.eigen import curvature_diagonal, default_damping


def ihvp(v: torch.Tensor, factors: dict[str, torch.Tensor], damping: float | None = None,
         damping_factor: float = 0.1) -> torch.Tensor:
    """IHVP(V) for one sublayer (Eq. 12–13); `factors` holds QA, LA, QS, LS and optionally Lambda.
    V may carry leading batch dimensions (…, P, M)."""
    q_a, q_s = factors["QA"].to(torch.float64), factors["QS"].to(torch.float64)
    diag = curvature_diagonal(factors["LS"].to(torch.float64), factors["LA"].to(torch.float64),
                              factors["Lambda"].to(torch.float64) if "Lambda" in factors else None)
    lam = default_damping(diag, damping_factor) if damping is None else damping
    rotated = q_s.T @ v.to(torch.float64) @ q_a
    return q_s @ (rotated / (diag + lam)) @ q_a.T


def low_rank(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(U·diag(σ), V) of the best rank-r approximation U diag(σ) Vᵀ of x, and its relative Frobenius error."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    r = min(rank, s.numel())
    err = float(s[r:].norm() / s.norm()) if s.norm() > 0 else 0.0
    return u[:, :r] * s[:r], vh[:r].T.contiguous(), err
