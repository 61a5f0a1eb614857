"""Running sums of the curvature statistics, fed by the taps one batch at a time (DESIGN.md section 3).

Every consumer receives, per tap point, the input activations a (B, T, M) and output gradients
g (B, T, P) of a batch, together with the batch's token mask (B, T) — 1 on non-padding positions —
and sample weights (B,) — 0 for the filler samples that keep ranks in step. Padding is masked in
*both* factors. Sums are kept in `dtype` (float32 or float64) and are summed over ranks later.
"""

from __future__ import annotations

import torch


class BatchContext:
    """The mask and weights of the batch in flight (set by the driver before each pass)."""

    mask: torch.Tensor
    weight: torch.Tensor
    indices: list[int | None]

    def set(self, mask: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype, indices: list[int | None]) -> None:
        self.mask = mask.to(dtype)
        self.weight = weight.to(dtype)
        self.indices = indices  # position of each row in the sample list; None for filler rows

    def tokens_first(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`x` as (B, T, D) in `dtype`: some models (OPT) flatten activations to (B·T, D) inside a block."""
        return x.reshape(self.mask.shape[0], self.mask.shape[1], -1).to(dtype)


class RunningSums:
    """Per tap point running sums in `dtype`. They live on `home`: by default where the batches are (the
    device); `cpu` keeps them in host memory (`fit --factors-on cpu`): each batch's contribution is still
    computed on the device, one tap point at a time, and added into the host sums."""

    def __init__(self, ctx: BatchContext, dtype: torch.dtype, home: torch.device | None = None):
        self.ctx, self.dtype, self.home = ctx, dtype, home
        self.sums: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, name: str, **tensors: torch.Tensor) -> None:
        slot = self.sums.setdefault(name, {})
        for key, t in tensors.items():
            t = t if self.home is None else t.to(self.home)
            if key in slot:
                slot[key] += t
            else:
                slot[key] = t.clone()


class LinfacSums(RunningSums):
    """Eq. 11: Â = (1/N) Σ_n (1/T_n²)(Σ_t a_t)(Σ_t a_t)ᵀ, Ŝ = (1/N) Σ_n (Σ_t Ds_t)(Σ_t Ds_t)ᵀ.

    Holds Σ_n w_n ā_n ā_nᵀ (ā_n = Σ_t a_t / T_n) and Σ_n w_n ḡ_n ḡ_nᵀ (ḡ_n = Σ_t g_t); the driver divides
    by N after the reduction."""

    def __call__(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        m, w = self.ctx.mask.to(a.device), self.ctx.weight.to(a.device)
        a, g = self.ctx.tokens_first(a, self.dtype), self.ctx.tokens_first(g, self.dtype)
        a_sum = torch.einsum("bt,btm->bm", m, a)
        a_bar = a_sum / m.sum(1).clamp_min(1)[:, None]
        g_sum = torch.einsum("bt,btp->bp", m, g)
        A = torch.einsum("b,bm,bn->mn", w, a_bar, a_bar)
        S = torch.einsum("b,bp,bq->pq", w, g_sum, g_sum)
        self.add(name, A=A, S=S)


class TokenCovarianceSums(RunningSums):
    """EK-FAC (George et al. 2018): per Linear, A = mean over tokens of a aᵀ, S = mean over tokens of
    Ds Dsᵀ. Holds the token sums; the driver divides by the (all-reduced) token count."""

    def __call__(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        mw = (self.ctx.mask * self.ctx.weight[:, None]).to(a.device)
        a, g = self.ctx.tokens_first(a, self.dtype), self.ctx.tokens_first(g, self.dtype)
        A = torch.einsum("bt,btm,btn->mn", mw, a, a)
        S = torch.einsum("bt,btp,btq->pq", mw, g, g)
        self.add(name, A=A, S=S)


def modular_gradient(mask: torch.Tensor, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Eq. 10: the modular gradient G(z) = Σ_t g_t a_tᵀ of each row of a batch, (B, P, M), from g (B, T, P)
    and a (B, T, M); `mask` (B, T) is 0 on padding positions."""
    return torch.einsum("bt,btp,btm->bpm", mask, g, a)


class EigenCorrectionSums(RunningSums):
    """Eigenvalue correction (EK-FAC style): Λ̂_ij = mean_n (Q_Sᵀ G(z_n) Q_A)_ij², with the per-sequence
    modular gradient G(z_n) = Σ_t g_t a_tᵀ (Eq. 10). Holds Σ_n w_n (Q_Sᵀ G_n Q_A)².

    Q_Sᵀ G Q_A = Σ_t (Q_Sᵀ g_t)(Q_Aᵀ a_t)ᵀ: when the sequence is shorter than P·M(P+M)/(P²+M²) tokens
    (P, M ≥ T, the usual case), rotating the tokens costs T(P²+M²) per sequence instead of P·M(P+M) for
    rotating G. The bases are cast to `dtype` once per tap point."""

    def __init__(self, ctx: BatchContext, dtype: torch.dtype, bases: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 home: torch.device | None = None):
        super().__init__(ctx, dtype, home)
        self.bases = bases
        self._cast: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def casts(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The bases' copies in `dtype` (none when they already are: `.to` then returns the same tensors)."""
        return {k: v for k, v in self._cast.items() if v[0] is not self.bases[k][0]}

    def __call__(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        if name not in self._cast:
            self._cast[name] = tuple(q.to(device=a.device, dtype=self.dtype) for q in self.bases[name])
        q_a, q_s = self._cast[name]
        m, w = self.ctx.mask.to(a.device), self.ctx.weight.to(a.device)
        a, g = self.ctx.tokens_first(a, self.dtype), self.ctx.tokens_first(g, self.dtype)
        t, p, k = g.shape[1], q_s.shape[0], q_a.shape[0]
        if t * (p * p + k * k) < p * k * (p + k):
            rotated = modular_gradient(m, g @ q_s, a @ q_a)
        else:
            rotated = q_s.T @ modular_gradient(m, g, a) @ q_a
        self.add(name, Lambda=torch.einsum("b,bpm->pm", w, rotated * rotated))

