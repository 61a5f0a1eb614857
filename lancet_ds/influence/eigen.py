"""Eigendecomposition of the factors and the damping rule (DESIGN.md section 3, Eq. 12–13)."""

from __future__ import annotations

import torch

DEFAULT_DAMPING_FACTOR = 0.1


def eigendecompose(matrix: torch.Tensor, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, λ) with matrix = Q diag(λ) Qᵀ, eigenvectors as columns, λ ascending. The factors are PSD, so
    round-off negatives are clamped to 0. Q is returned contiguous: eigh's column-major result would
    otherwise travel transposed through collectives that send raw storage."""
    sym = matrix.to(dtype)
    sym = 0.5 * (sym + sym.T)
    values, vectors = torch.linalg.eigh(sym)
    return vectors.contiguous(), values.clamp_min(0)


def curvature_diagonal(l_s: torch.Tensor, l_a: torch.Tensor, corrected: torch.Tensor | None = None) -> torch.Tensor:
    """The (P, M) diagonal of the Kronecker curvature in its eigenbasis: λ_S λ_Aᵀ, or the eigenvalue-
    corrected Λ̂ when given."""
    return corrected if corrected is not None else torch.outer(l_s, l_a)


def default_damping(diagonal: torch.Tensor, factor: float = DEFAULT_DAMPING_FACTOR) -> float:
    """λ = factor × mean of the curvature diagonal (0.1 × mean(λ_S λ_Aᵀ) by default), per sublayer."""
    return float(factor * diagonal.double().mean())
